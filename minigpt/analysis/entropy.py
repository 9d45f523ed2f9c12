"""Attention entropy: how spread out each head's attention is.

A query's attention row is a distribution over the keys it may see; its entropy, -Σ p log p in
nats, is 0 when the head looks at one token and log(n) when it spreads evenly over n. A head
whose entropy stays near 0 attends sharply (the previous token, say); one near log(n) averages.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import real_tokens
from ..model import GPT
from .loss import check_gpt
from .pruning import kept_heads


@torch.no_grad()
def attention_entropy(model: GPT, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """(n_layer, n_head): each head's attention entropy in nats, averaged over real query positions
    (padding queries left out), with 0·log 0 = 0. A pruned head's entry is NaN: it has no attention."""
    trace = check_gpt(model, "attention_entropy").trace(input_ids, attention_mask)  # checks the inputs
    real = real_tokens(input_ids, attention_mask)
    config = model.config
    entropy = torch.full((config.n_layer, config.n_head), float("nan"), device=input_ids.device)
    for layer, pattern in enumerate(trace.attentions):  # (b h t s), NaN for a pruned head
        kept = kept_heads(model, layer)
        p = pattern[:, kept].float()
        p_log_p = torch.where(p > 0, p * p.log(), 0.0)  # 0·log 0 is 0, not NaN
        per_query = -p_log_p.sum(dim=-1)  # (b h t)
        entropy[layer, kept] = (per_query * real[:, None]).sum(dim=(0, 2)) / real.sum()  # (h): over real queries
    return entropy
