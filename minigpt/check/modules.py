"""The suites for a learner's module: an attention, a block, an MLP or a norm.

The piece is a factory, GPTConfig -> module (what `GPT(config, make_block=...)` takes for a block),
and is checked where it lives: swapped into a small GPT-2 (the rest of the block minigpt's own),
the model then run through the properties every lesson rests on. With GPT-2's weights loaded into
it (a random GPT-2 whose weights are drawn large enough that every idea changes the output), it
must give GPT-2's activations; where it does not, the probes (variants.py) say which idea differs.

Axes: b batch, t positions, e model width.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from hypothesis import strategies as st
from torch import Tensor, nn

from ..block import TransformerBlock
from ..components import make_attention, make_mlp, make_norm
from ..config import GPTConfig
from ..model import GPT, visibility
from .properties import crashed, holds, once
from .report import Finding
from .variants import module_probes

CONFIG = GPTConfig(n_layer=2, n_head=4, n_embd=32, vocab_size=96, n_positions=32)  # heads 8 wide
Factory = Callable[[GPTConfig], nn.Module]
# float32, summed in another order: a correct piece is within about 1e-6 of the reference; every
# wrong idea the probes hold moves the output by more than 1e-3 of its size
TOLERANCE = 1e-4


def as_block(kind: str, piece: Factory) -> Factory:
    """The learner's piece inside GPT-2's block, the other parts minigpt's own."""
    if kind == "block":
        return piece
    if kind == "attention":
        return lambda c: TransformerBlock(make_norm(c), piece(c), make_norm(c), make_mlp(c))
    if kind == "mlp":
        return lambda c: TransformerBlock(make_norm(c), make_attention(c), make_norm(c), piece(c))
    return lambda c: TransformerBlock(piece(c), make_attention(c), piece(c), make_mlp(c))  # a norm


def lively(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter drawn again so that each idea shows in the output: matrices scaled to keep
    activations of order 1 (GPT-2's N(0, 0.02) would make every attention nearly uniform, and a
    missing 1/sqrt(d) invisible), norm weights near 1 and biases near 0 but not equal to them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.dim() >= 2:  # (out in) or (v e): unit-variance outputs
                parameter.copy_(noise / math.sqrt(parameter.shape[-1]))
            else:
                parameter.copy_(noise * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    return module.eval()


def load_parameters(into: nn.Module, reference: nn.Module) -> str | None:
    """The reference's parameters copied into `into`, name by name; what does not match, in words."""
    theirs, mine = dict(reference.named_parameters()), dict(into.named_parameters())
    missing = [n for n in theirs if n not in mine]
    unexpected = [n for n in mine if n not in theirs]
    misshaped = [f"{n} {tuple(mine[n].shape)} (GPT-2's: {tuple(theirs[n].shape)})" for n in theirs
                 if n in mine and mine[n].shape != theirs[n].shape]
    problems = [f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}" for label, names in
                (("missing", missing), ("not GPT-2's", unexpected), ("misshaped", misshaped)) if names]
    if problems:
        return "GPT-2's weights do not load: " + "; ".join(problems)
    with torch.no_grad():
        for name, parameter in mine.items():
            parameter.copy_(theirs[name])
    return None


def differs(mine: Tensor, theirs: Tensor) -> float:
    """How far apart, relative to the reference's size; NaN and inf count as equal only where both
    have them (a different shape, or a NaN on one side only: infinitely far)."""
    if not isinstance(mine, Tensor) or mine.shape != theirs.shape:
        return math.inf
    mine, theirs = mine.float(), theirs.float()
    same = (mine == theirs) | (mine.isnan() & theirs.isnan())
    gap = float(torch.where(same, 0.0, (mine - theirs).abs()).max()) if mine.numel() else 0.0
    size = float(theirs[theirs.isfinite()].abs().max()) if bool(theirs.isfinite().any()) else 0.0
    return gap / (1.0 + size) if math.isfinite(gap) else math.inf


def safely(outputs: Callable[[], Tensor]) -> Tensor:
    """What a piece outputs on the probe input, or NaN if it raises there (then no probe matches)."""
    try:
        return outputs()
    except Exception:  # the learner's code may raise anything; the properties report it
        return torch.tensor(math.nan)


def ids(rows: int, length: int, seed: int) -> Tensor:
    return torch.randint(0, CONFIG.vocab_size, (rows, length), generator=torch.Generator().manual_seed(seed))


def probe_batch() -> tuple[Tensor, Tensor]:
    """Three rows of 10 tokens, two of them left-padded (3 and 6): where every idea shows."""
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, :3], mask[2, :6] = 0, 0
    return ids(3, 10, seed=7), mask


def model_outputs(model: GPT) -> Tensor:
    """The logits at every real position of the probe batch."""
    tokens, mask = probe_batch()
    with torch.no_grad():
        return model(tokens, attention_mask=mask)[mask.bool()]


def build(kind: str, piece: Factory, reference: GPT) -> tuple[GPT, str | None]:
    """A GPT with the piece swapped in, GPT-2's (lively) weights loaded where they fit."""
    torch.manual_seed(0)
    model = lively(GPT(CONFIG, make_block=as_block(kind, piece)), seed=1)
    return model.eval(), load_parameters(model, reference)


# ---- the properties, through the model ----------------------------------------------------------

def causal(model: GPT) -> Finding:
    def test(example) -> str | None:
        (length, j), seed = example
        tokens = ids(1, length, seed)
        changed = tokens.clone()
        changed[0, j] = (changed[0, j] + 1) % CONFIG.vocab_size
        with torch.no_grad():
            before, after = model(tokens)[0, :j], model(changed)[0, :j]
        moved = ((before - after).abs().amax(dim=-1) > 1e-5).nonzero().flatten().tolist()
        return f"the logits at position {moved[0]} changed when token {j} changed (t={length})" if moved else None
    lengths = st.integers(2, 10).flatmap(lambda t: st.tuples(st.just(t), st.integers(1, t - 1)))
    return holds("a query never sees a later key", "no-mask", st.tuples(lengths, st.integers(0, 999)), test)


def padding(model: GPT) -> Finding:
    def test(example) -> str | None:
        length, pad, seed = example
        row, other = ids(1, length, seed), ids(1, length + pad, seed + 1)
        padded = torch.cat([torch.cat([ids(1, pad, seed + 2), row], dim=1), other])  # (2 t+pad)
        mask = torch.ones_like(padded)
        mask[0, :pad] = 0
        with torch.no_grad():
            alone, beside = model(row)[0], model(padded, attention_mask=mask)[0, pad:]
        gap = differs(beside, alone)
        return None if gap <= TOLERANCE else (f"a row of {length} tokens behind {pad} padding tokens differs from the "
                                             f"same row alone by {gap:.2g}")
    return holds("left padding changes no real row", "own-causal-mask",
                 st.tuples(st.integers(1, 8), st.integers(1, 4), st.integers(0, 999)), test)


def cached(model: GPT) -> Finding:
    def test(example) -> str | None:
        (length, split), seed = example
        tokens = ids(2, length, seed)
        with torch.no_grad():
            whole = model(tokens)
            cache = model.new_cache(2, length)
            steps = [model(tokens[:, :split], cache=cache)[:, -1]]
            steps += [model.next_logits(tokens[:, i], cache) for i in range(split, length - 1)]
        for position, step in zip(range(split - 1, length - 1), steps):
            gap = differs(step, whole[:, position])
            if gap > TOLERANCE:
                return (f"with a cache (prefill of {split}, then one token a step) the logits at position {position} "
                        f"differ from one pass over {length} tokens by {gap:.2g}")
        return None
    splits = st.integers(2, 10).flatmap(lambda t: st.tuples(st.just(t), st.integers(1, t - 1)))
    return holds("cached steps equal one uncached pass", "cache-keys-as-values", st.tuples(splits, st.integers(0, 999)),
                 test)


def equals_gpt2(model: GPT, reference: GPT, load_problem: str | None) -> Finding:
    name = "with GPT-2's weights it computes GPT-2's activations"
    if load_problem is not None:
        return Finding(name, failure=load_problem, cause="gpt2-names")

    def test() -> str | None:
        tokens, mask = probe_batch()
        names = [f"blocks.{i}.resid_post" for i in range(CONFIG.n_layer)]
        with torch.no_grad():
            _, mine = model.run_with_cache(tokens, mask, names=names)
            _, theirs = reference.run_with_cache(tokens, mask, names=names)
        real = mask.bool()
        for point in names:
            gap = differs(mine[point][real], theirs[point][real])
            if gap > TOLERANCE:
                return f"{point} differs from GPT-2's by {gap:.2g} (the first layer that differs)"
        return None
    return once(name, "unknown", test)


def gradients(model: nn.Module, pieces: list[nn.Module], loss: Callable[[], Tensor]) -> Finding:
    def test() -> str | None:
        model.zero_grad()
        loss().backward()
        dead = [name for piece in pieces for name, p in piece.named_parameters()
                if p.grad is None or not bool(p.grad.abs().sum() > 0)]
        return f"no gradient reaches {', '.join(dict.fromkeys(dead))}" if dead else None
    return once("gradients reach every parameter", "no-gradient", test)


def model_loss(model: GPT) -> Callable[[], Tensor]:
    tokens = ids(2, 8, seed=3)
    return lambda: torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())


# ---- the properties, on the module alone ---------------------------------------------------------

def stream(rows: int, length: int, seed: int) -> Tensor:
    """A residual stream (b t e) whose positions differ in scale by up to 1000x: a norm's eps shows."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -3, length)[None, :, None]
    return torch.randn(rows, length, CONFIG.n_embd, generator=generator) * scales + 0.5 * scales


def call(kind: str, module: nn.Module, x: Tensor, allowed: Tensor | None = None) -> Tensor:
    if kind in ("attention", "block"):
        if allowed is None:
            _, allowed = visibility(torch.ones(x.shape[:2], dtype=torch.bool), torch.arange(x.shape[1]))
        return module(x, allowed)
    return module(x)


def keeps_shape(kind: str, module: nn.Module) -> Finding:
    def test(example) -> str | None:
        rows, length, seed = example
        x = stream(rows, length, seed)
        out = call(kind, module, x)
        if not isinstance(out, Tensor):
            return f"returned {type(out).__name__}, not a tensor (b t e)"
        if out.shape != x.shape or out.dtype != x.dtype:
            return f"took {tuple(x.shape)} {x.dtype}, returned {tuple(out.shape)} {out.dtype}"
        return None
    return holds("keeps the shape (b t e) and the dtype", "shape",
                 st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(0, 999)), test)


def position_wise(kind: str, module: nn.Module) -> Finding:
    def test(example) -> str | None:
        (length, j), seed = example
        x = stream(1, length, seed)
        changed = x.clone()
        changed[0, j] += 1.0
        with torch.no_grad():
            moved = (call(kind, module, x) - call(kind, module, changed)).abs().amax(dim=-1)[0]
        others = [p for p in range(length) if p != j and moved[p] > 1e-6]
        return f"position {others[0]} changed when only position {j} changed (t={length})" if others else None
    lengths = st.integers(2, 8).flatmap(lambda t: st.tuples(st.just(t), st.integers(0, t - 1)))
    return holds("each position is computed on its own", "norm-wrong-axis" if kind == "norm" else "unknown",
                 st.tuples(lengths, st.integers(0, 999)), test)


def permutation_equivariant(module: nn.Module) -> Finding:
    def test(example) -> str | None:
        length, seed = example
        x = stream(1, length, seed) / torch.logspace(0, -3, length)[None, :, None]  # every position at scale 1
        order = torch.randperm(length, generator=torch.Generator().manual_seed(seed))
        everything = torch.ones(1, 1, length, length, dtype=torch.bool)
        with torch.no_grad():
            gap = differs(call("attention", module, x[:, order], everything), call("attention", module, x, everything)[:, order])
        return None if gap <= TOLERANCE else f"with every key allowed, permuting {length} positions changed the outputs by {gap:.2g}"
    return holds("with every key allowed and no positions, permuting the tokens permutes the outputs", "unknown",
                 st.tuples(st.integers(2, 8), st.integers(0, 999)), test)


def direct_outputs(kind: str, module: nn.Module) -> Tensor:
    with torch.no_grad():
        return call(kind, module, stream(2, 6, seed=5))


# ---- the suite ---------------------------------------------------------------------------------

def first_match(mine: Tensor, reference: Tensor, probes: dict[str, list], outputs: Callable) -> str | None:
    """The first wrong idea whose probe computes what the piece does, if the piece is not right."""
    if differs(mine, reference) <= TOLERANCE:
        return None
    for key, variants in probes.items():
        if any(differs(mine, outputs(variant)) <= TOLERANCE for variant in variants):
            return key
    return None


def diagnose(piece: object, reference: object, probes: dict[str, list], outputs: Callable) -> str | None:
    """first_match for a piece the suite runs itself: its outputs (NaN where it raises) against the
    reference's, then each probe's, all by `outputs`."""
    return first_match(safely(lambda: outputs(piece)), outputs(reference), probes, outputs)


def module_suite(kind: str, piece: Factory) -> tuple[list[Finding], str | None]:
    """Every property of this kind of module, and the probe that matches it (None: none does, or
    it is right)."""
    torch.manual_seed(0)
    reference = lively(GPT(CONFIG), seed=1)
    try:
        model, load_problem = build(kind, piece, reference)
    except Exception as error:  # the learner's constructor may raise anything: that is the report
        text, cause = crashed(error)
        return [Finding("builds from a GPTConfig, inside GPT-2 (GPT(config, make_block=...))", failure=text,
                        cause=cause)], None
    first = model.blocks[0]
    own = first if kind == "block" else getattr(first, {"attention": "attn", "mlp": "mlp", "norm": "ln_1"}[kind])
    findings = [keeps_shape(kind, own)]
    probes = module_probes(kind, CONFIG)
    if kind in ("attention", "block"):
        findings += [causal(model), padding(model), cached(model)]
        findings.append(equals_gpt2(model, reference, load_problem))
        parts = [block if kind == "block" else block.attn for block in model.blocks]
        findings.append(gradients(model, parts, model_loss(model)))
        if kind == "attention":
            findings.append(permutation_equivariant(own))
        outputs = lambda variant: model_outputs(build(kind, variant, reference)[0])  # noqa: E731
        mine, theirs = safely(lambda: model_outputs(model)), model_outputs(reference)
    else:
        theirs_module = {"mlp": reference.blocks[0].mlp, "norm": reference.blocks[0].ln_1}[kind]
        findings.append(position_wise(kind, own))
        mine, theirs = safely(lambda: direct_outputs(kind, own)), direct_outputs(kind, theirs_module)
        same, gap = Finding(f"with GPT-2's weights it computes GPT-2's {kind}"), differs(mine, theirs)
        if load_problem is not None:
            same.failure, same.cause = load_problem, "gpt2-names"
        elif gap > TOLERANCE:
            same.failure, same.cause = f"differs from GPT-2's by {gap:.2g}", "unknown"
        findings.append(same)
        x = stream(2, 6, seed=9)
        findings.append(gradients(own, [own], lambda: (call(kind, own, x) * x).sum()))

        def outputs(variant: Factory) -> Tensor:
            module = variant(CONFIG)
            load_parameters(module, theirs_module)
            return direct_outputs(kind, module.eval())
    probe = None if load_problem else first_match(mine, theirs, probes, outputs)
    return findings, probe
