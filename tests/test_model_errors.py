"""Bad inputs to the config, the model and the KV cache: each a ValueError naming the problem,
refused before anything large is allocated."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minigpt import GPT, GPTConfig, KVCache
from minigpt.fast import pack_for_cpu

TINY = GPTConfig.preset("tiny")  # 2 layers, 2 heads, 32 wide, vocabulary 101, context 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(TINY).eval()


IDS = torch.tensor([[1, 2, 3]])


@pytest.mark.parametrize("call, message", [
    (lambda m: m(IDS, attention_mask=torch.tensor([[1, 0.4, 1]])), "attention_mask must hold only 0 and 1, got 0.4"),
    (lambda m: m(IDS, attention_mask=torch.tensor([[1, -1, 1]])), "only 0 and 1, got -1"),
    (lambda m: m(IDS, attention_mask=torch.tensor([[1, 2, 1]])), "only 0 and 1, got 2"),
    (lambda m: m(IDS, attention_mask=torch.zeros(1, 3)), "row 0 of attention_mask has no real token"),
    (lambda m: m(IDS, attention_mask=[[1, 1, 1]]), "attention_mask must be a tensor"),
    (lambda m: m(IDS, attention_mask=torch.ones(1, 4)), r"attention_mask must have shape \(1, 3\)"),
    (lambda m: m(IDS, head_mask=torch.full((2, 2), math.nan)), "head_mask holds NaN or inf"),
    (lambda m: m(IDS, head_mask=torch.ones(2, 2, dtype=torch.long)), "head_mask must be a floating-point tensor"),
    (lambda m: m(IDS, head_mask=[[1.0, 1.0], [1.0, 1.0]]), "head_mask must be a tensor"),
    (lambda m: m(IDS, head_mask=torch.ones(3, 3)), r"head_mask must have shape \(2, 2\)"),
    (lambda m: m(torch.tensor([[True, False]])), "input_ids must hold integer token ids"),
    (lambda m: m(torch.tensor([[1.0, 2.0]])), "input_ids must hold integer token ids"),
    (lambda m: m([[1, 2]]), "input_ids must be a .* tensor of token ids, got list"),
    (lambda m: m(torch.tensor([1, 2])), r"input_ids must be a \(batch, time\) tensor, got shape \(2,\)"),
    (lambda m: m(torch.tensor([[1, 101]])), r"token id 101 is outside the vocabulary \[0, 101\)"),
    (lambda m: m(torch.zeros(1, 65, dtype=torch.long)), "exceed the model's context of n_positions=64"),
    (lambda m: m(IDS, cache="cache"), "cache must be a KVCache"),
    (lambda m: m(IDS, cache=m.new_cache(2, 8)), "the cache holds 2 rows but input_ids has 1"),
    (lambda m: m.new_cache(1, 65), r"max_length must be in \[1, 64\], got 65"),
    (lambda m: m.new_cache(True, 8), "batch must be an integer, got bool True"),
    (lambda m: m.new_cache(0, 8), r"batch must be in \[1, inf\)"),
    (lambda m: m.new_cache(10**9, 64), "a KV cache of 1000000000 rows x 64 positions needs .* GiB, more than this machine"),
    (lambda m: m.new_cache(2, 8).take_rows(torch.tensor([0, 2])), r"take_rows' row indices must be in \[0, 2\)"),
    (lambda m: m.new_cache(2, 8).take_rows(torch.tensor([], dtype=torch.long)), "non-empty 1-D long tensor"),
    (lambda m: m.new_cache(2, 8).reorder(torch.tensor([0, 2])), r"row indices must be in \[0, 2\)"),
    (lambda m: m.new_cache(2, 8).reorder([0, 1]), "reorder takes a long tensor of 2 row indices"),
    (lambda m: GPT(TINY, make_block="block"), "make_block must be a function"),
    (lambda m: GPT({"n_layer": 2}), "GPT needs a GPTConfig, got dict"),
    (lambda m: GPT(GPTConfig(n_layer=10**6)), r"GPT\(.* parameters\) needs .* GiB, more than this machine"),
    (lambda m: m(IDS, only_last="yes"), "only_last must be True or False"),
    (lambda m: KVCache(1, 1, 1, 1, 1, dtype=torch.int8), "dtype must be one of torch's float32"),
    (lambda m: KVCache(1, 1, 1, 1, 1, device="banana"), "device 'banana' is not a device name"),
    (lambda m: pack_for_cpu(m.blocks[0]), "pack_for_cpu packs a minigpt GPT, got TransformerBlock"),
    (lambda m: GPTConfig.preset(2), "a preset is named by a string"),
    (lambda m: GPTConfig.preset("gpt5"), "unknown preset 'gpt5'; known: gpt2, gpt2-medium"),
    (lambda m: GPTConfig.from_hf_dict(["n_layer"]), "a GPT-2 config is a dict"),
])
def test_bad_input_is_named(model, call, message):
    with pytest.raises(ValueError, match=message):
        call(model)


def test_a_mask_that_contradicts_the_cache_is_refused(model):
    cache = model.new_cache(1, 8)
    with torch.no_grad():
        model(IDS, attention_mask=torch.tensor([[0, 1, 1]]), cache=cache)
    with pytest.raises(ValueError, match="first 3 columns contradict the padding the cache already holds"):
        model(torch.tensor([[4]]), attention_mask=torch.tensor([[1, 1, 1, 1]]), cache=cache)
    with torch.no_grad():  # the mask the cache holds, extended, is accepted
        model(torch.tensor([[4]]), attention_mask=torch.tensor([[0, 1, 1, 1]]), cache=cache)
    assert cache.length == 4


@given(st.one_of(st.floats(allow_nan=True).filter(lambda x: x not in (0, 1)), st.integers().filter(lambda x: x not in (0, 1))))
def test_any_mask_value_but_0_and_1_is_refused(value):
    model = GPT(TINY).eval()
    mask = torch.tensor([[1.0, value, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        model(IDS, attention_mask=mask)


@given(st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(0, 1), st.integers(0, 1))
def test_any_non_finite_head_mask_is_refused(value, layer, head):
    model = GPT(TINY).eval()
    head_mask = torch.ones(2, 2)
    head_mask[layer, head] = value
    with pytest.raises(ValueError, match="head_mask holds NaN or inf"):
        model(IDS, head_mask=head_mask)


INT_FIELDS = ["n_layer", "n_head", "n_embd", "vocab_size", "n_positions", "n_inner"]
not_an_int = st.one_of(st.booleans(), st.floats(allow_nan=True), st.text(max_size=4), st.just([2]))


@given(st.sampled_from(INT_FIELDS), not_an_int)
def test_any_config_size_that_is_not_an_int_is_refused(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be an integer, got"):
        GPTConfig(**{field: value})


@given(st.sampled_from(["layer_norm_epsilon", "dropout"]),
       st.one_of(st.booleans(), st.text(max_size=4), st.sampled_from([math.nan, math.inf, -math.inf])))
def test_any_config_rate_that_is_not_a_finite_number_is_refused(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be (a number|finite)"):
        GPTConfig(**{field: value})


@pytest.mark.parametrize("fields, message", [
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1"),
    ({"layer_norm_epsilon": 0.0}, r"layer_norm_epsilon must be in \(0, inf\)"),
    ({"n_embd": 10, "n_head": 3}, r"n_embd \(10\) must be divisible by n_head \(3\)"),
])
def test_config_ranges(fields, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**fields)
