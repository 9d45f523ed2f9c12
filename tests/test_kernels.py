"""Kernels chosen by timing (minigpt/fast/kernels.py) and the fused step (fused.py).

- The choice is made by the clock: a candidate made slow is never chosen, even as the default.
- It is cached per machine and reused (nothing is timed again), a choice timed on a busy machine
  is timed again, and `clear_cache` forgets it.
- Only what the CPU runs is a candidate: with a fake capability probe answering as an AVX2 CPU
  (or one with none of the vector extensions, and no oneDNN), rows.cpp runs the build of that
  level and no other, and oneDNN only where the probe has it.
- Results do not depend on the choice: every kernel of a format computes the format's numbers
  (rows.format_product), summed in other orders. float32 and bfloat16: every kernel, and the
  fused step, equal each other to 1e-5 of the logits' scale (measured ~1e-7 here). int8: the
  activations are rounded to 16-bit integers, and two sums a last float32 bit apart can round to
  neighbours there (one step: 1/32767 of the row's largest), carried through the layers. Greedy
  tokens are the same whichever kernel is forced
  (test_greedy_tokens_are_the_same_whichever_kernel_is_forced).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decoders
from minigpt import GPT, GPTConfig
from minigpt.attention import explicit_attention
from minigpt.fast import WEIGHT_FORMATS, Capabilities, FusedStep, clear_cache, describe, optimize, report
from minigpt.fast import cpu, fused, kernels, rows
from minigpt.fast.kernels import Routes, routes_of
from minigpt.fast.rows import built
from weights import SHAKESPEARE, load_gpt2, load_tokenizer

pytestmark = pytest.mark.skipif(not (built() and torch.backends.mkldnn.is_available()),
                                reason="needs rows.cpp built and oneDNN")

SAME = 1e-5  # relative to the largest |logit|: float32 sums in another order
# Two kernels of a format, or the fused and the module step through the same kernels, relative to
# the largest |logit|: float32 sums in another order (measured up to 5e-7 over 60 random models);
# int8 as the module docstring says (measured up to 5e-5).
ROUNDING = {"float32": SAME, "bfloat16": SAME, "int8": 2e-4}
# The format against the float32 model, relative to the largest |logit|, on random small models
# (logits of order 1): bfloat16 rounds weights by 2^-9; int8 rounds weights by 1/254 of their
# block's largest. Measured up to 0.006 and 0.03.
FORMAT_BOUND = {"float32": SAME, "bfloat16": 0.03, "int8": 0.1}


@st.composite
def configs(draw) -> GPTConfig:
    """Small GPT-2 shapes rows.cpp can run: widths in whole blocks of 32."""
    n_embd = draw(st.sampled_from([32, 64, 96]))
    return GPTConfig(n_layer=draw(st.integers(1, 3)), n_head=draw(st.sampled_from([h for h in (1, 2, 4) if n_embd % h == 0
                                                                                      and (n_embd // h) % 16 == 0])),
                     n_embd=n_embd, vocab_size=draw(st.integers(40, 300)), n_positions=48)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_CACHE_DIR", str(tmp_path))
    return tmp_path / "kernels.json"


def model_for(config: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config).eval().requires_grad_(False)


def padded_prompt(config: GPTConfig, rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids (rows length) and their mask, each row at least one real token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (rows, length), generator=g)
    starts = torch.randint(0, length, (rows,), generator=g)
    mask = (torch.arange(length)[None, :] >= starts[:, None]).long()
    return ids, mask


def slow(kernel):
    def run(x):
        time.sleep(0.002)  # more than any of these small products takes
        return kernel(x)
    return run


def test_a_slow_kernel_is_never_chosen_even_as_the_default(fresh_cache):
    model = optimize(model_for(GPTConfig.preset("tiny")), weights="float32")
    for routes in routes_of(model):  # a slow copy of oneDNN, made the default
        routes.kernels["sleepy"] = slow(routes.kernels["oneDNN"])
        routes.choose({1: "sleepy"})
    assert all("sleepy" in line for line in report(model))
    kernels.choose(model)
    chosen = {name for routes in routes_of(model) for name in routes.chosen.values()}
    assert chosen and "sleepy" not in chosen and chosen <= {"oneDNN", "rows.cpp", "rows.cpp+prefetch", "ATen"}


def test_measure_takes_the_least_time_at_every_row_count():
    """measure on a fake clock: kernel "b" is the faster at 1-3 rows, "a" from 4 on."""
    now = [0.0]

    def costs(per_row: float, fixed: float):
        def run(x):
            now[0] += fixed + per_row * x.shape[0]
            return x
        return run

    routes = Routes("float32 32x32", {"a": costs(1.0, 10.0), "b": costs(4.0, 0.0)}, default="a")
    chosen, spread = kernels.measure([routes], clock=lambda: now[0])["float32 32x32 [a b]"]
    assert spread == 1.0  # the fake clock's passes take the same time each
    assert all(name == ("b" if rows < 4 else "a") for rows, name in chosen.items() if rows <= 4)
    assert set(chosen.values()) == {"a", "b"} and list(chosen) == list(kernels.ROWS)


def test_the_choice_is_cached_reused_and_cleared(fresh_cache, monkeypatch):
    monkeypatch.setattr(kernels, "NOISY", float("inf"))  # a tiny model's microsecond passes spread widely
    config = GPTConfig.preset("tiny")
    first = optimize(model_for(config), weights="int8")
    cached = fresh_cache.read_text()
    assert kernels.machine_key() in cached and "step int8" in cached  # the matrices' and the step's choices

    def must_not_time(*args, **kwargs):
        raise AssertionError("timed again, though the choice was cached")

    monkeypatch.setattr(kernels, "measure", must_not_time)
    monkeypatch.setattr(fused, "measure", must_not_time)
    second = optimize(model_for(config, seed=1), weights="int8")  # same shape, other weights: reused
    assert describe(second) == describe(first) and fresh_cache.read_text() == cached

    assert clear_cache() == fresh_cache and not fresh_cache.exists()
    with pytest.raises(AssertionError, match="timed again"):
        optimize(model_for(config), weights="int8")


def test_a_choice_timed_on_a_busy_machine_is_timed_again_then_kept(fresh_cache, monkeypatch):
    """Passes that spread by more than NOISY: the next call times again, up to TRIES times."""
    calls = []

    def busy(keys):
        calls.append(keys)
        return {key: ({1: "a"}, 2.0) for key in keys}

    for _ in range(kernels.TRIES + 2):
        assert kernels.cached(["kind"], busy, "kinds", verbose=False) == {"kind": {1: "a"}}
    assert len(calls) == kernels.TRIES
    settled = lambda keys: {key: ({1: "b"}, 1.0) for key in keys}  # noqa: E731
    assert kernels.cached(["other"], settled, "kinds", verbose=False) == {"other": {1: "b"}}
    assert kernels.cached(["other"], busy, "kinds", verbose=False) == {"other": {1: "b"}}  # settled: not timed again


def forced(model: GPT, name: str) -> GPT:
    """Every matrix that has kernel `name` multiplies with it, at every row count."""
    for routes in routes_of(model):
        if name in routes.kernels:
            routes.choose({1: name})
    return model


@settings(max_examples=10)  # each new shape is timed first (about half a second)
@given(config=configs(), weights=st.sampled_from(WEIGHT_FORMATS), seed=st.integers(0, 2**16))
def test_results_equal_whatever_kernel_is_chosen(config, weights, seed):
    model = model_for(config, seed)
    ids, mask = padded_prompt(config, 3, 9, seed)
    expected = model(ids, attention_mask=mask)
    optimized = optimize(copy.deepcopy(model), weights=weights)
    names = sorted({name for routes in routes_of(optimized) for name in routes.kernels})
    assert {"rows.cpp", "oneDNN" if weights == "float32" else "widened"} <= set(names)
    for part in (slice(0, 1), slice(0, 3)):  # a step's row, and a batch
        scale = expected[part].abs().max()
        results = {name: forced(optimized, name)(ids[part], attention_mask=mask[part]) for name in names}
        for name, got in results.items():
            assert (got - expected[part]).abs().max() <= FORMAT_BOUND[weights] * scale, name
            assert (got - results[names[0]]).abs().max() <= ROUNDING[weights] * scale, (name, names[0])


KERNELS = ("rows.cpp", "rows.cpp+prefetch", "rows.cpp tiles", "rows.cpp tiles+prefetch", "oneDNN")


@settings(max_examples=10)
@given(config=configs(), format_and_kernel=st.sampled_from([(w, k) for w in WEIGHT_FORMATS for k in KERNELS]),
       seed=st.integers(0, 2**16), rows=st.integers(1, 5), data=st.data())
def test_the_fused_step_equals_the_module_step(config, format_and_kernel, seed, rows, data):
    """Logits and the whole cache after a padded prompt and a few steps, against the module step
    with every matrix forced to the same kernel (the fused step runs the one the routes chose)."""
    weights, kernel = format_and_kernel
    length = data.draw(st.integers(1, 12))
    ids, mask = padded_prompt(config, rows, length, seed)
    model = forced(optimize(model_for(config, seed), weights=weights), kernel)
    step = model.step
    step.rows = {r: "fused" for r in fused.STEP_ROWS}  # fused at every batch size, whatever was measured
    caches = [model.new_cache(rows, length + 4) for _ in range(2)]
    for cache in caches:
        model(ids, attention_mask=mask, cache=cache)
    tokens = torch.randint(0, config.vocab_size, (rows,), generator=torch.Generator().manual_seed(seed))
    bound = ROUNDING[weights]
    for _ in range(4):
        fused_logits, module_logits = step(tokens, caches[0]), model.model.next_logits(tokens, caches[1])
        assert (fused_logits - module_logits).abs().max() <= bound * module_logits.abs().max()
        tokens = module_logits.argmax(-1)
    for a, b in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values):
        assert (a - b).abs().max() <= bound * b.abs().max()
    assert torch.equal(caches[0].real, caches[1].real) and int(caches[0].end) == int(caches[1].end)


@pytest.mark.parametrize("weights", WEIGHT_FORMATS)
def test_greedy_tokens_are_the_same_whichever_kernel_is_forced(weights):
    """The model in the box, 6 prompts decoded alone and as one padded batch, every matrix forced
    to each of its format's kernels in turn (module by module, then fused where it can run)."""
    model = load_gpt2(SHAKESPEARE)
    tok = load_tokenizer(SHAKESPEARE)
    lines = ["ROMEO:\n", "KING LEAR:\nO", "HAMLET:\nTo be", "First Citizen:\n", "JULIET:\nAy me", "PROSPERO:\n"]
    ids, mask = tok.encode_batch(lines)
    fast = optimize(model, weights=weights)
    names = sorted({name for routes in routes_of(fast) for name in routes.kernels})
    tokens = {}
    for name in names:
        forced(fast, name)
        fast.step.kernels.clear()  # the fused step's kernels per row count, taken from the routes again
        for step in ("modules", "fused"):
            fast.step.rows = {r: step for r in fused.STEP_ROWS}
            alone = [decoders.greedy(fast, ids[i:i + 1, -int(mask[i].sum()):], max_new_tokens=24).new_tokens for i in range(len(lines))]
            batch = decoders.greedy(fast, ids, attention_mask=mask, max_new_tokens=24).new_tokens
            tokens[(name, step)] = torch.cat([torch.cat(alone), batch])
    first = next(iter(tokens.values()))
    assert all(torch.equal(t, first) for t in tokens.values()), {k: int((t != first).sum()) for k, t in tokens.items()}


@pytest.mark.parametrize("probe", [Capabilities(level="avx2", onednn=True), Capabilities(level="generic", onednn=False)])
def test_a_kernel_the_cpu_lacks_is_never_a_candidate(probe, fresh_cache, monkeypatch):
    """A fake probe answering as an AVX2 CPU, and as one with none of the vector extensions and a
    PyTorch without oneDNN: every format optimizes, rows.cpp runs the build of that level and no
    other, oneDNN runs only where the probe has it."""
    monkeypatch.setattr(cpu, "capabilities", lambda: probe)
    levels = []
    real_ops = rows.ops
    for module in (rows, fused):  # rows.cpp's products, and the fused step
        monkeypatch.setattr(module, "ops", lambda level=None: levels.append(level or cpu.capabilities().level) or real_ops(level))
    model = model_for(GPTConfig.preset("tiny"))
    ids = torch.randint(0, 101, (2, 7), generator=torch.Generator().manual_seed(0))
    for weights in WEIGHT_FORMATS:
        fast = optimize(copy.deepcopy(model), weights=weights)
        names = {name for routes in routes_of(fast) for name in routes.kernels}
        assert ("oneDNN" in names) == (probe.onednn and weights == "float32")
        assert (fast(ids) - model(ids)).abs().max() <= FORMAT_BOUND[weights] * model(ids).abs().max()
        decoders.greedy(fast, ids[:1], max_new_tokens=3)
    assert levels and set(levels) == {probe.level}
    assert str(probe) in kernels.machine_key()  # a restricted process keeps choices of its own
    with pytest.raises(ValueError, match="rows.cpp level must be one this CPU runs"):
        rows.built("avx512")


def test_the_probe_answers_as_pytorchs_restricted_level():
    """ATEN_CPU_CAPABILITY=default lowers PyTorch's kernels, and ours with them, to the generic level."""
    code = "from minigpt.fast import capabilities; print(capabilities().level)"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["generic"]


def test_the_fused_step_steps_aside_for_hooks_and_swaps():
    model = optimize(model_for(GPTConfig.preset("tiny")), weights="float32")
    step = model.step
    assert isinstance(step, FusedStep)
    step.rows = {r: "fused" for r in fused.STEP_ROWS}
    assert step.fused(1)
    with model.hooks({"blocks.0.mlp.post": lambda x: x * 0}):  # a hook: the module step runs it
        assert not step.fused(1)
        cache = model.new_cache(1, 4)
        hooked = step(torch.tensor([3]), cache)
        assert (hooked - model.model.next_logits(torch.tensor([3]), model.new_cache(1, 4))).abs().max() == 0
    assert step.fused(1)
    model.blocks[0].attn.attend = lambda *args: explicit_attention(*args)  # another attention: not what was fused
    assert not step.fused(1)
    with pytest.raises(ValueError, match="block 0's attention is swapped"):
        FusedStep(model.model)


def test_a_step_that_cannot_be_fused_says_why():
    with pytest.raises(ValueError, match="has no rows.cpp layout"):
        FusedStep(model_for(GPTConfig.preset("tiny")))
