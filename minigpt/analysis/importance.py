"""Head importance (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?", eq. 2).

Give every head a gate ξ that multiplies its output (`head_mask`); at ξ = 1 the model is unchanged.
A head's importance is how much the loss would move if its gate moved. The paper defines it as an
expectation over examples, I_h = E_x |∂L(x)/∂ξ_h|: the absolute value is taken per example, so two
examples that pull the gate in opposite directions both count. That is the default here, and it
costs one backward pass per batch: each row gets a gate of its own (head_mask (b l h)), so the
gradient of the sum of the rows' losses gives every row's own gradient at once.

per_example=False takes |∂L/∂ξ| of a batch's mean loss instead (what a training loop's gradient
would see): opposite pulls within a batch cancel, so the result depends on how the examples were
batched (the same 32 speeches as one batch or as 32 batches correlated at 0.59).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from ..model import GPT
from ..checks import check_finite_tensor
from .loss import check_gpt, token_losses


def head_importance(
    model: GPT,
    input_ids: Tensor | Iterable[tuple[Tensor, Tensor | None]],
    attention_mask: Tensor | None = None,
    *,
    per_example: bool = True,
    head_mask: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """(n_layer, n_head): E over examples of |∂L(x) / ∂ξ| at ξ = head_mask (default 1), ξ each head's
    gate and L(x) an example's mean next-token loss. An example is a row with a token to predict.

    input_ids: one batch (b t), or an iterable of (input_ids, attention_mask) batches.
    per_example=False: |∂L/∂ξ| of each batch's mean loss, averaged weighted by its predicted tokens.
    head_mask (l h): the gates to differentiate at; 0 for heads already masked (the course's
    mask-and-recompute loop). normalize: divide each layer's row by its L2 norm, as the paper does
    before comparing heads across layers. A pruned head gets 0 (its gate reaches nothing).
    """
    check_gpt(model, "head_importance")
    for name, value in (("normalize", normalize), ("per_example", per_example)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
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
    if head_mask is not None:
        check_finite_tensor("head_mask", head_mask, (config.n_layer, config.n_head))
    at = torch.ones(config.n_layer, config.n_head, device=model.device) if head_mask is None else head_mask.detach()
    total = torch.zeros(config.n_layer, config.n_head, device=model.device)
    count = 0  # examples, or with per_example=False predicted tokens
    for ids, attention_mask in batches:
        rows = ids.shape[0] if isinstance(ids, Tensor) and ids.dim() == 2 else 1
        # each row its own copy of the gates, or one set for the batch: (b l h) or (l h)
        gate = (at.expand(rows, -1, -1) if per_example else at).to(model.device).clone().requires_grad_(True)
        with torch.enable_grad():  # a gradient is the point, even when called under torch.no_grad()
            losses, counted = token_losses(model, ids, attention_mask, head_mask=gate)  # (b t-1) each
            if per_example:
                has_tokens = counted.any(dim=1)  # a row with one real token predicts nothing: not an example
                example_losses = losses.sum(dim=1) / counted.sum(dim=1).clamp(min=1)  # (b): L(x) for each row
                (gradient,) = torch.autograd.grad(example_losses.sum(), gate)  # row i's slice is ∂L(x_i)/∂ξ
                total += gradient.abs()[has_tokens].sum(dim=0)
                count += int(has_tokens.sum())
            else:
                (gradient,) = torch.autograd.grad(losses.sum() / counted.sum(), gate)
                total += gradient.abs() * int(counted.sum())
                count += int(counted.sum())
    importance = total / count
    if normalize:
        importance = importance / importance.norm(dim=-1, keepdim=True).clamp(min=1e-20)  # a layer of zeros stays 0
    return importance
