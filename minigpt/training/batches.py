"""Training batches: windows of block + 1 tokens at random places in one long token stream.

Each window gives the model `block` tokens and, shifted by one, the `block` tokens it must
predict. Where the windows start is drawn from a torch.Generator of our own, whose state is part
of a checkpoint: a resumed run draws exactly the windows the uninterrupted run would have.

The stream is a 1-D tensor, or a numpy array such as the memory map of a token file
(`token_file.py`): only the windows drawn are read, so the corpus may be larger than memory.

With several processes (`parallel.py`), every rank draws the same starts for the whole global
batch, from generators seeded alike, and takes its own share of them: together the ranks train on
exactly the windows one process would, and no rank needs to hear from another to know its share.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..checks import check_int


class TokenWindows:
    def __init__(self, tokens: Tensor | np.ndarray, block: int, seed: int):
        check_int("block", block, 1)
        stream = tokens.numpy() if isinstance(tokens, Tensor) else tokens  # a view: nothing is copied
        if not isinstance(stream, np.ndarray) or stream.ndim != 1 or len(stream) < block + 1:
            size = len(stream) if isinstance(stream, np.ndarray) else type(tokens).__name__
            raise ValueError(f"the token stream has {size} tokens; a window needs block + 1 = {block + 1}")
        self.tokens, self.block = stream, block
        self.generator = torch.Generator().manual_seed(seed)

    def windows(self, starts: list[int]) -> tuple[Tensor, Tensor]:
        """(inputs, targets), both (b block), for windows at `starts`; targets are the inputs moved one on."""
        rows = np.stack([self.tokens[s : s + self.block + 1] for s in starts])  # (b block+1): reads these alone
        windows = torch.from_numpy(rows.astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def step(self, batch: int, accumulate: int, rank: int = 0, ranks: int = 1) -> list[tuple[Tensor, Tensor]]:
        """This rank's `accumulate` micro-batches of one optimizer step. The step's global batch is
        ranks x accumulate x batch windows, drawn at once; rank r takes micro-batches r*accumulate ...
        (r+1)*accumulate - 1. One process with accumulate=2 and two ranks with accumulate=1 train on
        the same windows."""
        starts = torch.randint(0, len(self.tokens) - self.block, (ranks * accumulate * batch,),
                               generator=self.generator).tolist()
        mine = range(rank * accumulate, (rank + 1) * accumulate)
        return [self.windows(starts[i * batch : (i + 1) * batch]) for i in mine]

    def in_order(self, batch: int, rank: int = 0, ranks: int = 1):
        """Every token once, in consecutive windows (for the held-out loss): yields (inputs, targets).
        With several ranks, rank r takes batches r, r + ranks, ... (their losses are summed across ranks)."""
        count = (len(self.tokens) - 1) // self.block
        for first in range(rank * batch, count, ranks * batch):
            starts = range(first * self.block, min(first + batch, count) * self.block, self.block)
            yield self.windows(list(starts))
