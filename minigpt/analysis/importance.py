"""Head importance (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?", eq. 2).

Give every head a gate ξ that multiplies its output (`head_mask`); at ξ = 1 the model is unchanged.
A head's importance is how much the loss would move if its gate moved: |∂ loss / ∂ξ_h|, a
first-order estimate of the loss change from removing the head, for the price of one backward pass.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from ..model import GPT
from .loss import check_gpt, lm_loss, predicted


def head_importance(
    model: GPT,
    input_ids: Tensor | Iterable[tuple[Tensor, Tensor | None]],
    attention_mask: Tensor | None = None,
    *,
    normalize: bool = True,
) -> Tensor:
    """(n_layer, n_head): |∂ lm_loss / ∂ξ| at ξ = 1, ξ each head's gate.

    input_ids: one batch (b t), or an iterable of (input_ids, attention_mask) batches; their
    importances are averaged weighted by each batch's number of predicted tokens.
    normalize: divide each layer's row by its L2 norm, as the paper does before comparing heads
    across layers. A pruned head gets 0 (its gate reaches nothing).
    """
    check_gpt(model, "head_importance")
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize must be True or False, got {normalize!r}")
    if not isinstance(input_ids, Tensor) and attention_mask is not None:
        raise ValueError("attention_mask goes with a single batch; with an iterable of batches, give each batch "
                         "its own as (input_ids, attention_mask) pairs")
    batches = [(input_ids, attention_mask)] if isinstance(input_ids, Tensor) else list(input_ids)
    odd = next((i for i, batch in enumerate(batches) if not isinstance(batch, (tuple, list)) or len(batch) != 2), None)
    if odd is not None:
        raise ValueError(f"batch {odd} must be an (input_ids, attention_mask) pair, got {type(batches[odd]).__name__}")
    if not batches:
        raise ValueError("head_importance got no batches")
    config = model.config
    total = torch.zeros(config.n_layer, config.n_head, device=model.device)
    tokens = 0
    for ids, attention_mask in batches:
        gate = torch.ones(config.n_layer, config.n_head, device=model.device, requires_grad=True)  # ξ = 1
        with torch.enable_grad():  # a gradient is the point, even when called under torch.no_grad()
            loss = lm_loss(model, ids, attention_mask, head_mask=gate)
            (gradient,) = torch.autograd.grad(loss, gate)
        count = int(predicted(ids, attention_mask).sum())
        total += gradient.abs() * count
        tokens += count
    importance = total / tokens
    if normalize:
        importance = importance / importance.norm(dim=-1, keepdim=True).clamp(min=1e-20)  # a layer of zeros stays 0
    return importance
