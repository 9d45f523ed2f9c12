"""The logit lens (nostalgebraist 2020): read every layer's residual stream as if it were the last.

Each hidden state goes through the final LayerNorm and the tied output head, giving the tokens
that layer "would predict". Early layers mostly predict the input token again; the prediction
sharpens towards the model's own as depth grows. The last entry is the model's logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model import GPT


@torch.no_grad()
def logit_lens(model: GPT, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """(n_layer + 1, b, t, v): logits read from the embeddings, then from each block's output."""
    trace = model.trace(input_ids, attention_mask)
    return torch.stack([model.head(model.ln_f(state)) for state in trace.hidden_states])
