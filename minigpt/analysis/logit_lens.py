"""The logit lens (nostalgebraist 2020): read every layer's residual stream as if it were the last.

Each hidden state goes through the final LayerNorm and the tied output head, giving the tokens
that layer "would predict". Early layers mostly predict the input token again; the prediction
sharpens towards the model's own as depth grows. The last entry is the model's logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_fits_in_memory
from ..model import GPT
from .loss import check_gpt


@torch.no_grad()
def logit_lens(model: GPT, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """(n_layer + 1, b, t, v): logits read from the embeddings, then from each block's output."""
    config = check_gpt(model, "logit_lens").config
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2:  # else trace names what is wrong
        rows, positions = input_ids.shape
        check_fits_in_memory((config.n_layer + 1) * rows * positions * config.vocab_size * 4,
                             f"logit_lens of {rows} x {positions} tokens ({config.n_layer + 1} x {config.vocab_size} "
                             "logits each)", model.device)
    trace = model.trace(input_ids, attention_mask)
    return torch.stack([model.head(model.ln_f(state)) for state in trace.hidden_states])
