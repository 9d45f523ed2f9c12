"""The suite for a learner's beam step: the heart of beam search (decoders/beam.py, steps 1 and 2).

    beam_step(scores (b k), logprobs (b k v)) -> (scores (b k), parents (b k), tokens (b k))

Each of the b searches has k beams with running scores (the sum of their tokens' log-probs; -inf
for a beam not live yet, as at the first step, where only beam 0 is) and each beam's next-token
log-probs. The step keeps the k best continuations over every beam x token, best first: their
scores (running + the token's log-prob), which beam each extends, and its token.
"""

from __future__ import annotations

from typing import Callable

import torch
from hypothesis import strategies as st
from torch import Tensor

from .modules import TOLERANCE, diagnose, differs
from .properties import holds
from .report import Finding


def beam_reference(scores: Tensor, logprobs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    b, k, v = logprobs.shape
    best, place = torch.topk((scores[:, :, None] + logprobs).flatten(1), k)  # over (k v) per search
    return best, place // v, place % v


def scores_not_added(scores: Tensor, logprobs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    b, k, v = logprobs.shape
    best, place = torch.topk(logprobs.flatten(1), k)
    return best, place // v, place % v


def each_beam_alone(scores: Tensor, logprobs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    best, tokens = (scores[:, :, None] + logprobs).max(dim=-1)  # every beam keeps its own best token
    order = best.argsort(dim=1, descending=True)
    return best.gather(1, order), order, tokens.gather(1, order)


def parent_by_modulo(scores: Tensor, logprobs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    b, k, v = logprobs.shape
    best, place = torch.topk((scores[:, :, None] + logprobs).flatten(1), k)
    return best, place % k, place // k


BEAM_PROBES: dict[str, list[Callable]] = {"beam-scores-not-added": [scores_not_added],
                                          "beam-each-alone": [each_beam_alone],
                                          "beam-index": [parent_by_modulo]}


def step_input(b: int, k: int, v: int, seed: int, first: bool = False) -> tuple[Tensor, Tensor]:
    """Running scores (b k) and log-probs (b k v) with no ties; at the first step only beam 0 is live."""
    generator = torch.Generator().manual_seed(seed)
    logprobs = (torch.randn(b, k, v, generator=generator) * 2).log_softmax(dim=-1)
    scores = -torch.rand(b, k, generator=generator) * 5
    if first:
        scores[:, 1:] = float("-inf")
    return scores, logprobs


def stacked(step: Callable, scores: Tensor, logprobs: Tensor) -> Tensor:
    """The three outputs side by side, (b k 3), for comparing with the reference and the probes."""
    return torch.stack([out.float() for out in step(scores.clone(), logprobs.clone())], dim=-1)


def beam_suite(step: Callable) -> tuple[list[Finding], str | None]:
    def shape(example) -> str | None:
        b, k, v, seed = example
        out = step(*step_input(b, k, v, seed))
        if not (isinstance(out, tuple) and len(out) == 3 and all(isinstance(x, Tensor) and x.shape == (b, k) for x in out)):
            shown = [tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__ for x in out] if isinstance(out, tuple) else type(out).__name__
            return f"returned {shown}: (scores, parents, tokens), each (b k) = {(b, k)}"
        return None

    def greedy(example) -> str | None:
        b, _, v, seed = example
        scores, logprobs = step_input(b, 1, v, seed)
        new_scores, parents, tokens = step(scores.clone(), logprobs.clone())
        if not torch.equal(tokens.long()[:, 0], logprobs[:, 0].argmax(dim=-1)):
            return f"with one beam over {v} tokens it took {tokens[:, 0].tolist()}, not the argmax {logprobs[:, 0].argmax(-1).tolist()}"
        gap = differs(new_scores[:, 0], scores[:, 0] + logprobs[:, 0].amax(dim=-1))
        return None if gap <= TOLERANCE else "with one beam the new score is not the running score plus the token's log-prob"

    def first_step(example) -> str | None:
        b, k, v, seed = example
        _, parents, _ = step(*step_input(b, k, v, seed, first=True))
        return None if bool((parents == 0).all()) else (
            f"at the first step (only beam 0 live, the others at -inf) it extended beams {parents.tolist()}")

    def equals(example) -> str | None:
        b, k, v, seed = example
        scores, logprobs = step_input(b, k, v, seed)
        gap = differs(stacked(step, scores, logprobs), stacked(beam_reference, scores, logprobs))
        return None if gap <= TOLERANCE else (f"with {k} beams over {v} tokens the kept continuations differ from the "
                                             f"{k} best of every beam x token (b={b})")

    sizes = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(5, 30), st.integers(0, 999))
    findings = [holds("returns (scores, parents, tokens), each (b k)", "shape", sizes, shape),
                holds("with one beam it is greedy", "unknown", sizes, greedy),
                holds("at the first step only beam 0 is extended", "beam-scores-not-added", sizes, first_step),
                holds("keeps the k best continuations of every beam x token, best first", "unknown", sizes, equals)]

    def outputs(f: Callable) -> Tensor:
        return torch.cat([stacked(f, *step_input(2, 4, 12, seed=1)).flatten(),
                          stacked(f, *step_input(2, 3, 9, seed=2, first=True)).flatten()])
    return findings, diagnose(step, beam_reference, BEAM_PROBES, outputs)
