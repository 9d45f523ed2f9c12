"""The suites for a learner's decoding pieces, each a plain function:

- top_p(logits (b v), top_p) -> logits (b v), the tokens outside the nucleus at -inf;
- top_k(logits (b v), k) -> logits (b v), all but the k most likely at -inf;
- sampler(logits (b v), temperature, generator) -> tokens (b), drawn from softmax(logits / T);
- decoder(model, input_ids (b t), max_new_tokens) -> (b t+n) tokens (or a Generation): greedy;
- entropy(pattern (b h t s)) -> (b h t): each query's attention entropy in nats.

Axes: b rows, v vocabulary, h heads, t queries, s keys.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from hypothesis import strategies as st
from torch import Tensor

import decoders
from decoders.processors import keep_top_k, keep_top_p

from ..config import GPTConfig
from ..model import GPT
from .modules import TOLERANCE, diagnose, differs, lively, safely
from .properties import holds, once
from .report import Finding
from .variants import TOP_K, TOP_P


def logits_table(rows: int, vocab: int, seed: int) -> Tensor:
    """Random logits with no ties, spread like a language model's (a few likely tokens)."""
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3.0


def kept(out: object) -> Tensor:
    """Which tokens a filter kept (b v), as floats: comparable with `differs`."""
    return torch.isfinite(out).float() if isinstance(out, Tensor) else torch.tensor(math.nan)


# ---- top-p and top-k ----------------------------------------------------------------------------

def filter_suite(fn: Callable, amount_name: str) -> tuple[list[Finding], str | None]:
    """top_p (amount: a mass in (0, 1]) or top_k (amount: a count >= 1), against minigpt's own."""
    reference, probes = (keep_top_p, TOP_P) if amount_name == "top_p" else (keep_top_k, TOP_K)
    # a mass in (0, 1), or a count up to the vocabulary's size
    amounts = (lambda vocab: st.floats(0.05, 0.99)) if amount_name == "top_p" else (lambda vocab: st.integers(1, vocab))

    def shape(example) -> str | None:
        rows, vocab, amount, seed = example
        logits = logits_table(rows, vocab, seed)
        out = fn(logits.clone(), amount)
        if not isinstance(out, Tensor) or out.shape != logits.shape:
            return f"took logits {tuple(logits.shape)}, returned {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
        survivors = torch.isfinite(out)
        if not torch.equal(out[survivors], logits[survivors]):
            return "changed the logits of tokens it kept: a filter only sets the others to -inf"
        return None

    def same_tokens(example) -> str | None:
        rows, vocab, amount, seed = example
        logits = logits_table(rows, vocab, seed)
        mine, theirs = kept(fn(logits.clone(), amount)), kept(reference(logits, amount))
        if torch.equal(mine, theirs):
            return None
        row = int((mine != theirs).any(dim=1).nonzero()[0])
        return (f"with {amount_name}={amount:.3g} over {vocab} tokens it kept {int(mine[row].sum())} where the "
                f"right set has {int(theirs[row].sum())}")

    def keeps_best(example) -> str | None:
        rows, vocab, _, seed = example
        logits = logits_table(rows, vocab, seed)
        amount = 1e-3 if amount_name == "top_p" else 1
        out = fn(logits.clone(), amount)
        best = logits.argmax(dim=-1)
        if not bool(torch.isfinite(out.gather(1, best[:, None])).all()):
            return f"with {amount_name}={amount} the most likely token was removed ({vocab} tokens)"
        return None

    examples = st.tuples(st.integers(1, 3), st.integers(2, 40)).flatmap(
        lambda size: st.tuples(st.just(size[0]), st.just(size[1]), amounts(size[1]), st.integers(0, 999)))
    findings = [holds("returns logits (b v), the kept ones unchanged", "shape", examples, shape),
                holds("always keeps the most likely token", "top-p-keeps-tail" if amount_name == "top_p"
                      else "top-k-keeps-least", examples, keeps_best),
                holds("keeps exactly the right tokens" + (": the most likely whose probabilities reach top_p, the "
                      "one that crosses it included" if amount_name == "top_p" else ": the k most likely"),
                      "unknown", examples, same_tokens)]

    fixed = [0.3, 0.6, 0.9] if amount_name == "top_p" else [1, 3, 7]
    def outputs(f: Callable) -> Tensor:
        return torch.cat([kept(f(logits_table(4, 30, seed=3).clone(), amount)).flatten() for amount in fixed])
    return findings, diagnose(fn, reference, probes, outputs)


# ---- sampling -----------------------------------------------------------------------------------

DRAWS = 4000  # a token's frequency is then within about 0.008 of its probability (one standard error)
DISTANCE = 0.05  # total variation allowed between the frequencies and the distribution

# what a wrong sampler draws from, given logits (v) and a temperature
SAMPLER_PROBES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "temperature-multiplies": lambda logits, t: (logits * t).softmax(-1),
    "sampler-argmax": lambda logits, t: torch.nn.functional.one_hot(logits.argmax(), logits.numel()).float(),
    "sampler-ignores-logits": lambda logits, t: torch.full_like(logits, 1 / logits.numel()),
}


def frequencies(fn: Callable, logits: Tensor, temperature: float, seed: int) -> Tensor:
    """How often each token is drawn, over DRAWS rows of the same logits (v)."""
    tokens = fn(logits.expand(DRAWS, -1).clone(), temperature, torch.Generator().manual_seed(seed))
    return torch.bincount(tokens.flatten().long(), minlength=logits.numel()).float() / DRAWS


def total_variation(p: Tensor, q: Tensor) -> float:
    return float((p - q).abs().sum() / 2)


def sampler_suite(fn: Callable) -> tuple[list[Finding], str | None]:
    def shape(example) -> str | None:
        rows, vocab, seed = example
        out = fn(logits_table(rows, vocab, seed), 1.0, torch.Generator().manual_seed(seed))
        if not isinstance(out, Tensor) or out.shape != (rows,) or out.is_floating_point():
            return f"returned {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}: one token id per row ({rows},)"
        if bool(((out < 0) | (out >= vocab)).any()):
            return f"drew a token outside [0, {vocab})"
        return None

    def cold(example) -> str | None:
        rows, vocab, seed = example
        logits = logits_table(rows, vocab, seed)
        out = fn(logits, 1e-4, torch.Generator().manual_seed(seed))
        return None if torch.equal(out.long(), logits.argmax(dim=-1)) else (
            f"at temperature 1e-4 it drew {out.tolist()}, not the most likely {logits.argmax(dim=-1).tolist()}")

    def banned(example) -> str | None:
        rows, vocab, seed = example
        logits = logits_table(rows, vocab, seed)
        logits[:, ::2] = float("-inf")  # every other token banned
        out = fn(logits.repeat(50, 1), 2.0, torch.Generator().manual_seed(seed))
        return f"drew banned token {int(out[out % 2 == 0][0])} ({vocab} tokens)" if bool((out % 2 == 0).any()) else None

    def follows(example) -> str | None:
        temperature, seed = example
        logits = logits_table(1, 6, seed)[0]
        freq, probs = frequencies(fn, logits, temperature, seed), (logits / temperature).softmax(-1)
        distance = total_variation(freq, probs)
        return None if distance <= DISTANCE else (
            f"at temperature {temperature:g}, over {DRAWS} draws the frequencies {[round(x, 2) for x in freq.tolist()]} "
            f"are {distance:.2f} from softmax(logits / T) = {[round(x, 2) for x in probs.tolist()]}")

    def seeded() -> str | None:
        logits = logits_table(8, 20, seed=4)
        first, again = (fn(logits, 1.0, torch.Generator().manual_seed(5)) for _ in range(2))
        return None if torch.equal(first, again) else "the same seed gave other draws: draw with the generator passed in"

    sizes = st.tuples(st.integers(1, 4), st.integers(2, 30), st.integers(0, 999))
    findings = [holds("returns one token id per row", "shape", sizes, shape),
                holds("near temperature 0 it takes the most likely token", "sampler-argmax", sizes, cold),
                holds("never draws a banned token (logit -inf)", "sampler-banned", sizes, banned),
                holds("draws follow softmax(logits / temperature)", "unknown",
                      st.tuples(st.sampled_from([0.5, 1.0, 2.0]), st.integers(0, 99)), follows, examples=6),
                once("the same generator seed gives the same draws", "unknown", seeded)]
    logits = logits_table(1, 6, seed=11)[0]
    probe = None
    measured = [safely(lambda t=t: frequencies(fn, logits, t, seed=12)) for t in (0.5, 2.0)]
    if any(total_variation(f, (logits / t).softmax(-1)) > DISTANCE for f, t in zip(measured, (0.5, 2.0))):
        probe = next((key for key, draws_from in SAMPLER_PROBES.items()
                      if all(total_variation(f, draws_from(logits, t)) <= DISTANCE for f, t in zip(measured, (0.5, 2.0)))),
                     None)
    return findings, probe


# ---- a greedy decoder -----------------------------------------------------------------------------

DECODER_CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=40, n_positions=32)


def decoding_model() -> GPT:
    torch.manual_seed(0)
    return lively(GPT(DECODER_CONFIG), seed=2)


def sequences(fn: Callable, model: GPT, prompt: Tensor, n: int) -> Tensor:
    with torch.no_grad():
        out = fn(model, prompt, n)
    return out.sequences if isinstance(out, decoders.Generation) else out


def first_position(model: GPT, prompt: Tensor, n: int) -> Tensor:
    for _ in range(n):
        prompt = torch.cat([prompt, model(prompt)[:, 0].argmax(-1, keepdim=True)], dim=1)
    return prompt


def not_appended(model: GPT, prompt: Tensor, n: int) -> Tensor:
    return torch.cat([prompt, model(prompt)[:, -1].argmax(-1, keepdim=True).expand(-1, n)], dim=1)


DECODER_PROBES = {"greedy-first-position": [first_position], "greedy-not-appended": [not_appended]}


def greedy_reference(model: GPT, prompt: Tensor, n: int) -> Tensor:
    return decoders.greedy(model, prompt, max_new_tokens=n).sequences


def decoder_suite(fn: Callable) -> tuple[list[Finding], str | None]:
    model = decoding_model()

    def shape(example) -> str | None:
        rows, length, n, seed = example
        prompt = torch.randint(0, 40, (rows, length), generator=torch.Generator().manual_seed(seed))
        out = sequences(fn, model, prompt, n)
        if not isinstance(out, Tensor) or out.shape != (rows, length + n):
            return (f"a prompt {tuple(prompt.shape)} and max_new_tokens={n} gave "
                    f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}, not {(rows, length + n)}")
        return None if torch.equal(out[:, :length], prompt) else "the returned rows do not start with the prompt"

    def argmax(example) -> str | None:
        rows, length, n, seed = example
        prompt = torch.randint(0, 40, (rows, length), generator=torch.Generator().manual_seed(seed))
        out, right = sequences(fn, model, prompt, n), greedy_reference(model, prompt, n)
        if torch.equal(out, right):
            return None
        row, step = (out != right).nonzero()[0].tolist()
        return (f"new token {step - length} of row {row} is {int(out[row, step])}; the argmax of the logits after "
                f"everything before it is {int(right[row, step])} (prompt of {length}, {n} new)")

    def rows_apart(example) -> str | None:
        _, length, n, seed = example
        prompt = torch.randint(0, 40, (2, length), generator=torch.Generator().manual_seed(seed))
        together = sequences(fn, model, prompt, n)
        alone = torch.cat([sequences(fn, model, prompt[i:i + 1], n) for i in range(2)])
        return None if torch.equal(together, alone) else "row 1's tokens change when row 0 is decoded beside it"

    examples = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(0, 999))
    findings = [holds("returns the prompt and max_new_tokens more tokens (b t+n)", "shape", examples, shape,
                      examples=10),
                holds("each new token is the argmax of the logits after everything before it", "unknown", examples,
                      argmax, examples=10),
                holds("a row's tokens do not depend on the rows beside it", "unknown", examples, rows_apart, examples=5)]
    prompt = torch.randint(0, 40, (3, 5), generator=torch.Generator().manual_seed(3))

    def outputs(f: Callable) -> Tensor:
        return sequences(f, model, prompt, 6).float()
    return findings, diagnose(fn, greedy_reference, DECODER_PROBES, outputs)


# ---- attention entropy ------------------------------------------------------------------------------

def entropy_reference(pattern: Tensor) -> Tensor:
    return -torch.where(pattern > 0, pattern * pattern.log(), 0.0).sum(dim=-1)


ENTROPY_PROBES = {
    "entropy-nan": [lambda p: -(p * p.log()).sum(dim=-1)],
    "entropy-bits": [lambda p: entropy_reference(p) / math.log(2)],
    "entropy-wrong-axis": [lambda p: -torch.where(p > 0, p * p.log(), 0.0).sum(dim=-2)],
    "entropy-sign": [lambda p: -entropy_reference(p)],
}


def patterns(b: int, h: int, t: int, seed: int) -> Tensor:
    """Causal attention patterns (b h t t): row i spread over keys 0..i, zeros beyond."""
    scores = torch.randn(b, h, t, t, generator=torch.Generator().manual_seed(seed)) * 2
    return scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf")).softmax(dim=-1)


def entropy_suite(fn: Callable) -> tuple[list[Finding], str | None]:
    def equals(example) -> str | None:
        b, h, t, seed = example
        pattern = patterns(b, h, t, seed)
        out = fn(pattern.clone())
        if not isinstance(out, Tensor) or out.shape != (b, h, t):
            return f"a pattern {tuple(pattern.shape)} gave {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}, not {(b, h, t)}"
        gap = differs(out, entropy_reference(pattern))
        return None if gap <= TOLERANCE else f"differs from -Σ p log p by {gap:.2g} (b={b} h={h} t={t})"

    def uniform(example) -> str | None:
        n = example
        out = fn(torch.full((1, 1, 1, n), 1 / n))
        return None if abs(float(out.flatten()[0]) - math.log(n)) <= 1e-5 else (
            f"attention spread evenly over {n} keys has entropy {float(out.flatten()[0]):.4g}; log {n} = {math.log(n):.4g}")

    def zeros(example) -> str | None:
        t = example
        out = fn(patterns(1, 1, t, seed=t))
        return None if bool(torch.isfinite(out).all()) else f"a causal pattern over {t} keys (zeros above the diagonal) gave {out.flatten().tolist()}"

    shapes = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 8), st.integers(0, 999))
    findings = [holds("a pattern with zeros (masked keys) gives a finite entropy", "entropy-nan", st.integers(2, 8), zeros),
                holds("even attention over n keys has entropy log n (nats)", "unknown", st.integers(1, 50), uniform),
                holds("equals -Σ p log p over each query's keys, (b h t)", "unknown", shapes, equals)]

    def outputs(f: Callable) -> Tensor:
        return f(patterns(2, 2, 5, seed=1)).float()
    return findings, diagnose(fn, entropy_reference, ENTROPY_PROBES, outputs)
