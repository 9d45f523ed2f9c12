"""Sliding-window attention (Child et al. 2019's local attention; Beltagy et al. 2020, Longformer;
Mistral 7B): each query sees only the last `window` tokens, itself included. Stacked layers still
pass information further back, a window per layer."""

from __future__ import annotations

from functools import partial

from torch import Tensor

from ..attention import AttendFn, CausalSelfAttention, explicit_attention
from .mask_distance import distances


def windowed(window: int, attend: AttendFn = explicit_attention) -> AttendFn:
    """`attend` over the keys at most window - 1 real tokens back (an AttendFn)."""
    return partial(_attend_in_window, window, attend)


def _attend_in_window(window: int, attend: AttendFn, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor,
                      dropout_p: float, at: CausalSelfAttention) -> Tensor:
    near = allowed & (distances(allowed) < window)  # (b 1 t s); the query itself always stays
    return attend(q, k, v, near, dropout_p, at)
