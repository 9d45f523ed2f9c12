"""The token embedding, used both ways: ids -> vectors at the bottom, vectors -> logits at the top.

GPT-2 ties its output head to the token embedding (Press & Wolf 2017; `lm_head.weight` is
`wte.weight` in transformers' `GPT2LMHeadModel`), so one (v e) table does both jobs.
"""

from __future__ import annotations

from torch import Tensor, nn


class TokenEmbedding(nn.Embedding):
    """forward: ids (b t) -> vectors (b t e). unembed: vectors (... e) -> logits (... v) = x wteᵀ."""

    def unembed(self, x: Tensor) -> Tensor:
        return x @ self.weight.T  # (... e) (e v) -> (... v)
