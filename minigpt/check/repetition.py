"""The suite for a learner's repetition penalty (CTRL, Keskar et al. 2019), a logits processor:

    penalize(logits (b v), tokens (b s), penalty) -> logits (b v)

Every token already in the row is made less likely, once however often it occurs: its logit is
divided by the penalty where positive and multiplied by it where negative (dividing a negative
logit would raise it). decoders/processors.py's `penalize_repeats` is the reference.
"""

from __future__ import annotations

from typing import Callable

import torch
from hypothesis import strategies as st
from torch import Tensor

from decoders.processors import penalize_repeats

from .modules import TOLERANCE, diagnose, differs
from .properties import holds
from .report import Finding


def reference(logits: Tensor, tokens: Tensor, penalty: float) -> Tensor:
    return penalize_repeats(logits, tokens, torch.ones_like(tokens, dtype=torch.bool), penalty)


def divides_all(logits: Tensor, tokens: Tensor, penalty: float) -> Tensor:
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, tokens, True)
    return torch.where(seen, logits / penalty, logits)


def per_occurrence(logits: Tensor, tokens: Tensor, penalty: float) -> Tensor:
    count = torch.zeros_like(logits).scatter_add(1, tokens, torch.ones_like(tokens, dtype=logits.dtype))
    return torch.where(logits < 0, logits * penalty ** count, logits / penalty ** count)


REPETITION_PROBES: dict[str, list[Callable]] = {"penalty-divides-negative": [divides_all],
                                                "penalty-per-occurrence": [per_occurrence]}


def history(rows: int, vocab: int, length: int, seed: int) -> tuple[Tensor, Tensor]:
    """Logits (b v) of both signs, and tokens so far (b s) with repeats (drawn from half the vocabulary)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator) * 3
    return logits, torch.randint(0, max(vocab // 2, 1), (rows, length), generator=generator)


def repetition_suite(fn: Callable) -> tuple[list[Finding], str | None]:
    def equals(example) -> str | None:
        rows, vocab, length, penalty, seed = example
        logits, tokens = history(rows, vocab, length, seed)
        gap = differs(fn(logits.clone(), tokens, penalty), reference(logits, tokens, penalty))
        return None if gap <= TOLERANCE else (f"with penalty {penalty:g} over {length} tokens so far, the logits differ "
                                             f"from the reference by {gap:.2g}")

    def less_likely(example) -> str | None:
        rows, vocab, length, penalty, seed = example
        logits, tokens = history(rows, vocab, length, seed)
        out = fn(logits.clone(), tokens, penalty)
        raised = (out.gather(1, tokens) > logits.gather(1, tokens) + 1e-6).nonzero()
        if len(raised):
            row, place = raised[0].tolist()
            token = int(tokens[row, place])
            return f"token {token}, already in the row, went from logit {float(logits[row, token]):.3g} up to {float(out[row, token]):.3g}"
        return None

    def unchanged(example) -> str | None:
        rows, vocab, length, _, seed = example
        logits, tokens = history(rows, vocab, length, seed)
        out = fn(logits.clone(), tokens, 1.0)
        return None if differs(out, logits) <= TOLERANCE else "penalty 1.0 changed the logits: it must leave them as they are"

    examples = st.tuples(st.integers(1, 3), st.integers(2, 30), st.integers(1, 12),
                         st.floats(1.05, 3.0), st.integers(0, 999))
    findings = [holds("penalty 1 changes nothing", "unknown", examples, unchanged),
                holds("a token already in the row never becomes more likely", "penalty-divides-negative", examples,
                      less_likely),
                holds("equals the CTRL penalty: positive logits divided, negative multiplied, once per token",
                      "unknown", examples, equals)]

    def outputs(f: Callable) -> Tensor:
        logits, tokens = history(3, 20, 12, seed=1)
        return f(logits.clone(), tokens, 1.7)
    return findings, diagnose(fn, reference, REPETITION_PROBES, outputs)
