"""The one way the fast paths change a model: each weight matrix swapped for a faster module."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..embedding import TokenEmbedding
from ..model import GPT


def swap_weights(model: GPT, linear: Callable[[nn.Linear], nn.Module],
                 head: Callable[[TokenEmbedding], TokenEmbedding]) -> GPT:
    """Every nn.Linear -> linear(it), the token embedding -> head(it), in place; the model is put
    in eval mode with its parameters frozen (the fast modules hold frozen copies). Returns the model."""
    model.eval().requires_grad_(False)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear:  # exactly nn.Linear: a subclass (or a swapped one) may compute something else
                setattr(parent, name, linear(child))
    if type(model.wte) is TokenEmbedding:  # not already swapped
        model.wte = head(model.wte)
    return model
