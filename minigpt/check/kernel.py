"""The suite for a learner's attention kernel: attend(q, k, v, allowed, dropout_p, at) -> out
(the `AttendFn` contract, minigpt/attention.py), checked on tensors alone.

Axes: b batch, h heads, t queries, s keys (the queries are the last t of them, as with a KV
cache), d head width.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import torch
from hypothesis import strategies as st
from torch import Tensor

from ..attention import explicit_attention
from .modules import TOLERANCE, diagnose, differs, safely
from .properties import holds
from .report import Finding
from .variants import ATTEND


def qkv(b: int, h: int, t: int, s: int, d: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Queries (b h t d) and keys and values (b h s d) whose scores are of order sqrt(d)."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=generator) for n in (t, s, s))


def causal_mask(t: int, s: int, hidden: int = 0) -> Tensor:
    """(1 1 t s): each query sees the keys up to its own place, less the first `hidden` (padding)."""
    keys = torch.arange(s)
    allowed = (keys[None, :] <= torch.arange(s - t, s)[:, None]) & (keys[None, :] >= hidden)
    allowed |= keys[None, :] == torch.arange(s - t, s)[:, None]  # a padding query still sees itself
    return allowed[None, None]


def hooks(pattern: list[Tensor] | None = None) -> SimpleNamespace:
    """What a kernel gets as `at`: the two hook points it passes its scores and pattern through."""
    return SimpleNamespace(hook_scores=lambda x: x,
                           hook_pattern=lambda x: (pattern.append(x) if pattern is not None else None) or x)


def run(attend: Callable, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, pattern: list | None = None) -> Tensor:
    with torch.no_grad():
        return attend(q, k, v, allowed, 0.0, hooks(pattern))


SHAPES = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 6), st.integers(0, 4),
                   st.sampled_from([1, 4, 8, 16]), st.integers(0, 999))  # b h t (s - t) d seed


def probe_outputs(attend: Callable) -> Tensor:
    """The kernel on a causal batch without a cache, and on one with a cache and padding."""
    plain = run(attend, *qkv(2, 2, 6, 6, 8, seed=1), causal_mask(6, 6))
    cached = run(attend, *qkv(2, 2, 3, 7, 8, seed=2), causal_mask(3, 7, hidden=2))
    return torch.cat([plain.flatten(), cached.flatten()])


def kernel_suite(attend: Callable) -> tuple[list[Finding], str | None]:
    def shape(example) -> str | None:
        b, h, t, extra, d, seed = example
        q, k, v = qkv(b, h, t, t + extra, d, seed)
        out = run(attend, q, k, v, causal_mask(t, t + extra))
        if not isinstance(out, Tensor):
            return f"returned {type(out).__name__}, not a tensor (b h t d)"
        if out.shape != q.shape or out.dtype != q.dtype:
            return f"q {tuple(q.shape)}, k and v {tuple(k.shape)}: returned {tuple(out.shape)} {out.dtype}, not {tuple(q.shape)}"
        return None

    def causal(example) -> str | None:
        b, h, t, extra, d, seed = example
        s = t + extra
        if s < 2:
            return None
        q, k, v = qkv(b, h, t, s, d, seed)
        j = s - 1  # the last key: only the last query may see it
        k2, v2 = k.clone(), v.clone()
        k2[..., j, :] += 1.0
        v2[..., j, :] += 1.0
        allowed = causal_mask(t, s)
        before, after = run(attend, q, k, v, allowed), run(attend, q, k2, v2, allowed)
        moved = ((before - after).abs().amax(dim=(0, 1, 3)) > 1e-6).nonzero().flatten().tolist()
        early = [i for i in moved if i < t - 1]
        return (f"the output at query {early[0]} (key position {s - t + early[0]}) changed when key {j} changed "
                f"(t={t} queries over s={s} keys, d={d})") if early else None

    def hidden(example) -> str | None:
        b, h, t, extra, d, seed = example
        s = t + extra
        if extra == 0:
            return None
        q, k, v = qkv(b, h, t, s, d, seed)
        k2, v2 = k.clone(), v.clone()
        k2[..., 0, :] += 1.0  # key 0 is padding: `allowed` hides it from every query
        v2[..., 0, :] += 1.0
        allowed = causal_mask(t, s, hidden=1)
        gap = differs(run(attend, q, k2, v2, allowed), run(attend, q, k, v, allowed))
        return None if gap <= 1e-6 else (f"changing key 0, which `allowed` hides from every query, changed the "
                                        f"output by {gap:.2g} (t={t}, s={s})")

    def sums_to_one(example) -> str | None:
        b, h, t, extra, d, seed = example
        pattern: list[Tensor] = []
        run(attend, *qkv(b, h, t, t + extra, d, seed), causal_mask(t, t + extra), pattern)
        if not pattern:
            return None
        sums = pattern[-1].sum(dim=-1)
        worst = float((sums - 1).abs().max())
        return None if worst <= 1e-5 else (f"a row of the pattern sums to {float(sums.flatten()[(sums - 1).abs().flatten().argmax()]):.4g} "
                                           f"over the keys (t={t}, s={t + extra})")

    def equals(example) -> str | None:
        b, h, t, extra, d, seed = example
        q, k, v = qkv(b, h, t, t + extra, d, seed)
        allowed = causal_mask(t, t + extra, hidden=min(extra, 1))
        gap = differs(run(attend, q, k, v, allowed), run(explicit_attention, q, k, v, allowed))
        return None if gap <= TOLERANCE else f"differs by {gap:.2g} (b={b} h={h} t={t} s={t + extra} d={d})"

    pattern: list[Tensor] = []
    safely(lambda: run(attend, *qkv(1, 1, 2, 2, 4, 0), causal_mask(2, 2), pattern))
    findings = [holds("keeps the shape (b h t d) and the dtype", "shape", SHAPES, shape),
                holds("a query never sees a later key", "no-mask", SHAPES, causal),
                holds("a key that `allowed` hides (padding, an empty cache slot) changes nothing", "own-causal-mask",
                      SHAPES, hidden),
                holds("the pattern's rows sum to 1 over the keys", "softmax-over-queries", SHAPES, sums_to_one)
                if pattern else Finding("the pattern's rows sum to 1 over the keys",
                                        skipped="the kernel does not pass its pattern through at.hook_pattern"),
                holds("equals softmax(q kᵀ / sqrt(d)) v over the allowed keys", "unknown", SHAPES, equals)]
    return findings, diagnose(attend, explicit_attention, ATTEND, probe_outputs)
