"""The suite for a learner's position scheme: the sinusoids of "Attention Is All You Need" (3.5),

    positions(n_positions, n_embd) -> table (n_positions, n_embd)
    PE[p, 2i] = sin(p / 10000^(2i / n_embd)),   PE[p, 2i + 1] = cos(p / 10000^(2i / n_embd)),

a fixed table where GPT-2 learns its own (`wpe`); row p is added to the token embedding at
position p. Each pair (2i, 2i + 1) turns at its own rate, so a position is a point on circles of
wavelengths from 2π to 10000 · 2π, and a shift by k is the same rotation at every position.
"""

from __future__ import annotations

from typing import Callable

import torch
from hypothesis import strategies as st
from torch import Tensor

from .modules import TOLERANCE, diagnose, differs
from .properties import holds
from .report import Finding


def sinusoids(n_positions: int, n_embd: int, *, layout: str = "interleaved", exponent: float = 2.0,
              first: str = "sin") -> Tensor:
    """The table, with the ideas a learner may change: sines and cosines in two halves rather than
    interleaved, the exponent i / n_embd instead of 2i / n_embd, cosine at the even places."""
    p = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (n 1)
    i = torch.arange(n_embd // 2, dtype=torch.float32)[None, :]  # (1 e/2)
    angle = p / 10000 ** (exponent * i / n_embd)  # (n e/2)
    even, odd = (angle.sin(), angle.cos()) if first == "sin" else (angle.cos(), angle.sin())
    if layout == "halves":
        return torch.cat([even, odd], dim=1)
    return torch.stack([even, odd], dim=-1).flatten(1)  # (n e): even, odd, even, odd, ...


POSITION_PROBES: dict[str, list[Callable]] = {
    "positions-halves": [lambda n, e: sinusoids(n, e, layout="halves")],
    "positions-exponent": [lambda n, e: sinusoids(n, e, exponent=1.0)],
    "positions-swapped": [lambda n, e: sinusoids(n, e, first="cos")],
}


def positions_suite(fn: Callable) -> tuple[list[Finding], str | None]:
    def shape(example) -> str | None:
        n, half = example
        out = fn(n, 2 * half)
        if not isinstance(out, Tensor) or out.shape != (n, 2 * half) or not out.is_floating_point():
            return f"positions({n}, {2 * half}) returned {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}, not a float table {(n, 2 * half)}"
        return None

    def start(example) -> str | None:
        _, half = example
        row = fn(1, 2 * half)[0]
        want = torch.tensor([0.0, 1.0]).repeat(half)
        return None if differs(row, want) <= TOLERANCE else f"position 0 is {[round(x, 3) for x in row[:6].tolist()]}..., not (0, 1, 0, 1, ...): sin 0 = 0, cos 0 = 1"

    def prefix(example) -> str | None:
        n, half = example
        gap = differs(fn(n, 2 * half), fn(n + 5, 2 * half)[:n])
        return None if gap <= TOLERANCE else f"the first {n} rows change when {n + 5} positions are asked for: a position's row depends on the length"

    def equals(example) -> str | None:
        n, half = example
        gap = differs(fn(n, 2 * half), sinusoids(n, 2 * half))
        return None if gap <= TOLERANCE else f"differs from the paper's table by {gap:.2g} ({n} positions x {2 * half})"

    sizes = st.tuples(st.integers(1, 64), st.integers(1, 16))
    findings = [holds("returns a float table (n_positions, n_embd)", "shape", sizes, shape),
                holds("position 0 is (0, 1, 0, 1, ...)", "positions-swapped", sizes, start),
                holds("a position's row does not depend on how many positions are asked for", "unknown", sizes, prefix),
                holds("equals sin and cos of p / 10000^(2i / n_embd), interleaved", "unknown", sizes, equals)]

    def outputs(f: Callable) -> Tensor:
        return f(40, 16).float()
    return findings, diagnose(fn, sinusoids, POSITION_PROBES, outputs)
