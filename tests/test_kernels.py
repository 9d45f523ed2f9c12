"""Kernels chosen by timing (minigpt/fast/kernels.py) and the fused step (fused.py).

- The choice is made by the clock: a candidate made slow is never chosen, even as the default.
- It is cached per machine and reused (nothing is timed again), and `clear_cache` forgets it.
- Results do not depend on the choice. float32: every kernel, and the fused step, equal the
  readable model to 1e-5 of the logits' scale (the same float32 products summed in other
  orders; measured ~1e-7 here). bfloat16 and int8: the kernels compute different things by
  design (oneDNN rounds the activations to bfloat16, fbgemm quantizes them to 8 bits, rows.cpp
  keeps them float32 and reads int8 in blocks of 32 rather than per row), so each is held to the
  float32 model within its format's bound (below), and the fused step, which runs rows.cpp or
  oneDNN as the routes say, to the module step with every matrix forced to the same kernel.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt import GPT, GPTConfig
from minigpt.attention import explicit_attention
from minigpt.fast import WEIGHT_FORMATS, FusedStep, clear_cache, describe, fuse_step, optimize, report
from minigpt.fast import fused, kernels
from minigpt.fast.kernels import Routes, routes_of
from minigpt.fast.rows import built

pytestmark = pytest.mark.skipif(not (built() and torch.backends.mkldnn.is_available()),
                                reason="needs rows.cpp built and oneDNN")

SAME = 1e-5  # relative to the largest |logit|: float32 sums in another order
# relative to the largest |logit|, on random small models (logits of order 1): bfloat16 rounds
# weights and, in oneDNN, activations by 2^-9; int8 rounds weights by 1/254 of their block's or
# row's largest and fbgemm the activations by 1/510 of their range. Measured up to 0.006 and 0.03.
FORMAT_BOUND = {"float32": SAME, "bfloat16": 0.03, "int8": 0.1}
# The fused step against the module step, both through the same kernel: float32 sums in another
# order; where an activation is rounded (int8 in rows.cpp: to 16-bit integers, one step 1/32767 of
# the row's largest; in fbgemm: to 8 bits, one step 1/255 of the input's range; bfloat16 in
# oneDNN: to bfloat16, 2^-9), the two steps' LayerNorms, a last bit apart, can land on either side
# of a rounding. Measured over 60 random models: int8 in rows.cpp up to 5e-5, the others through
# rows.cpp up to 3e-7; over 40 more, float32 through oneDNN up to 5e-7 and bfloat16 through oneDNN
# up to 0.0021; over 120, int8 through fbgemm up to 0.015.
FUSED_BOUND = {("float32", "rows.cpp"): SAME, ("bfloat16", "rows.cpp"): SAME, ("int8", "rows.cpp"): 2e-4,
               ("float32", "oneDNN"): SAME, ("bfloat16", "oneDNN"): 0.01, ("int8", "fbgemm"): 0.05}


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
    assert chosen and "sleepy" not in chosen and chosen <= {"oneDNN", "rows.cpp", "ATen"}


def test_measure_takes_the_least_time_at_every_row_count():
    """measure on a fake clock: kernel "b" is the faster at 1-3 rows, "a" from 4 on."""
    now = [0.0]

    def costs(per_row: float, fixed: float):
        def run(x):
            now[0] += fixed + per_row * x.shape[0]
            return x
        return run

    routes = Routes("float32 32x32", {"a": costs(1.0, 10.0), "b": costs(4.0, 0.0)}, default="a")
    chosen = kernels.measure([routes], clock=lambda: now[0])["float32 32x32 [a b]"]
    assert all(name == ("b" if rows < 4 else "a") for rows, name in chosen.items() if rows <= 4)
    assert set(chosen.values()) == {"a", "b"} and list(chosen) == list(kernels.ROWS)


def test_the_choice_is_cached_reused_and_cleared(fresh_cache, monkeypatch):
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
    names = {name for routes in routes_of(optimized) for name in routes.kernels}
    assert {"rows.cpp", "fbgemm" if weights == "int8" else "oneDNN"} <= names
    for name in sorted(names):
        forced(optimized, name)
        for rows in (slice(0, 1), slice(0, 3)):  # a step's row, and a batch
            got = optimized(ids[rows], attention_mask=mask[rows])
            scale = expected[rows].abs().max()
            assert (got - expected[rows]).abs().max() <= FORMAT_BOUND[weights] * scale, name


@settings(max_examples=10)
@given(config=configs(), format_and_kernel=st.sampled_from(sorted(FUSED_BOUND)), seed=st.integers(0, 2**16),
       rows=st.integers(1, 5), data=st.data())
def test_the_fused_step_equals_the_module_step(config, format_and_kernel, seed, rows, data):
    """Logits and the whole cache after a padded prompt and a few steps, against the module step
    with every matrix forced to the same kernel (the fused step runs the one the routes chose)."""
    weights, kernel = format_and_kernel
    length = data.draw(st.integers(1, 12))
    ids, mask = padded_prompt(config, rows, length, seed)
    model = forced(optimize(model_for(config, seed), weights=weights), kernel)
    step = model.next_logits
    step.rows = {r: "fused" for r in fused.STEP_ROWS}  # fused at every batch size, whatever was measured
    caches = [model.new_cache(rows, length + 4) for _ in range(2)]
    for cache in caches:
        model(ids, attention_mask=mask, cache=cache)
    tokens = torch.randint(0, config.vocab_size, (rows,), generator=torch.Generator().manual_seed(seed))
    for _ in range(4):
        fused_logits, module_logits = step(tokens, caches[0]), GPT.next_logits(model, tokens, caches[1])
        assert (fused_logits - module_logits).abs().max() <= FUSED_BOUND[format_and_kernel] * module_logits.abs().max()
        tokens = module_logits.argmax(-1)
    for a, b in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values):
        assert (a - b).abs().max() <= FUSED_BOUND[format_and_kernel] * b.abs().max()
    assert torch.equal(caches[0].real, caches[1].real) and int(caches[0].end) == int(caches[1].end)


def test_the_fused_step_steps_aside_for_hooks_and_swaps():
    model = optimize(model_for(GPTConfig.preset("tiny")), weights="float32")
    step = model.next_logits
    assert isinstance(step, FusedStep)
    step.rows = {r: "fused" for r in fused.STEP_ROWS}
    assert step.fused(1)
    with model.hooks({"blocks.0.mlp.post": lambda x: x * 0}):  # a hook: the module step runs it
        assert not step.fused(1)
        cache = model.new_cache(1, 4)
        hooked = step(torch.tensor([3]), cache)
        assert (hooked - GPT.next_logits(model, torch.tensor([3]), model.new_cache(1, 4))).abs().max() == 0
    assert step.fused(1)
    model.blocks[0].attn.attend = lambda *args: explicit_attention(*args)  # another attention: not what was fused
    assert not step.fused(1)
    with pytest.raises(ValueError, match="block 0's attention is swapped"):
        fuse_step(model)


def test_fuse_step_says_why_it_cannot():
    with pytest.raises(ValueError, match="has no rows.cpp layout"):
        fuse_step(model_for(GPTConfig.preset("tiny")))
    with pytest.raises(ValueError, match="already replaced"):
        fuse_step(optimize(model_for(GPTConfig.preset("tiny"))))
