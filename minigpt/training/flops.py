"""Training FLOPs per token: what a step costs, so variants can be compared at equal compute.

Counted as Kaplan et al. (2020) count them, from the products a token takes part in:
- each weight matrix a token passes through costs 2 FLOPs per weight (a multiply and an add):
  the attention's projections, the MLP's matrices, and the output head (GPT-2's head is the token
  embedding, tied: counted once, as the product it is; the lookup on the way in is free);
- each layer's scores q kᵀ and their weighted sum of values cost 2 x 2 x context x n_embd: every
  query meets every key of its window of `context` tokens. The masked half of a causal (or
  sliding-window) square is computed and thrown away by the kernels, so it is counted;
- the backward pass costs twice the forward (a gradient for the input and one for the weights),
  so a training token costs 3 x forward.
Norms, activations, softmax and rotary turns are a few FLOPs per number, not per weight: left out,
as in the papers. `tests/test_experiment.py` holds this count equal to torch's own FlopCounterMode
over a forward and backward pass of each variant.
"""

from __future__ import annotations

from torch import nn


def forward_flops_per_token(model: nn.Module, context: int) -> int:
    """FLOPs of one token's forward pass through `model` (a minigpt GPT) in windows of `context`."""
    config = model.config
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and not name.endswith("wpe.weight"))
    return 2 * matrices + 2 * 2 * config.n_layer * context * config.n_embd


def training_flops_per_token(model: nn.Module, context: int) -> int:
    """FLOPs of one training token: its forward pass and the backward pass, twice the forward."""
    return 3 * forward_flops_per_token(model, context)
