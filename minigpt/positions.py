"""Where each token is: what the model adds to the token embeddings before the first block.

A position scheme is a module passed to the model (`GPT(config, make_positions=...)`):
embeddings (b t e) and each token's position (b t) -> embeddings (b t e). Positions count real
tokens only (model.visibility), so a left-padded row gets the positions it gets alone. GPT-2 adds
a learned vector per position; rotary and ALiBi positions act inside attention instead
(components/), so with them the model adds nothing here.
"""

from __future__ import annotations

from torch import Tensor, nn


class LearnedPositions(nn.Embedding):
    """GPT-2's `wpe`: one learned vector for each of n_positions positions, added to the token's."""

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:  # (b t e), (b t) -> (b t e)
        return x + super().forward(positions)


class NoPositions(nn.Module):
    """Nothing added: the positions are the attention's business (rotary, ALiBi)."""

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        return x
