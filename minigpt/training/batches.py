"""Training batches: windows of block + 1 tokens at random places in one long token stream.

Each window gives the model `block` tokens and, shifted by one, the `block` tokens it must
predict. Where the windows start is drawn from a torch.Generator of our own, whose state is part
of a checkpoint: a resumed run draws exactly the windows the uninterrupted run would have.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_int


class TokenWindows:
    def __init__(self, tokens: Tensor, block: int, seed: int):
        check_int("block", block, 1)
        if tokens.dim() != 1 or len(tokens) < block + 1:
            raise ValueError(f"the token stream has {len(tokens)} tokens; a window needs block + 1 = {block + 1}")
        self.tokens, self.block = tokens, block
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch: int) -> tuple[Tensor, Tensor]:
        """(inputs, targets), both (batch block): targets are the inputs moved one token on."""
        starts = torch.randint(0, len(self.tokens) - self.block, (batch,), generator=self.generator)
        windows = torch.stack([self.tokens[s : s + self.block + 1] for s in starts.tolist()])  # (batch block+1)
        return windows[:, :-1], windows[:, 1:]

    def in_order(self, batch: int):
        """Every token once, in consecutive windows (for the held-out loss): yields (inputs, targets)."""
        usable = (len(self.tokens) - 1) // self.block * self.block
        inputs = self.tokens[:usable].view(-1, self.block)
        targets = self.tokens[1 : usable + 1].view(-1, self.block)
        for start in range(0, len(inputs), batch):
            yield inputs[start : start + batch], targets[start : start + batch]
