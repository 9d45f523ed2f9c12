"""Every bad argument to a decoder gets a ValueError that names it; none reaches torch.

Classes of bad values are drawn by hypothesis (any NaN/inf float, any bool or non-integer where an
int belongs, any mask value other than 0 and 1); single cases are listed. And the other side:
every value inside the allowed ranges decodes without a NaN.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decoders
from decoding_models import PAD, models, prompts

PROMPT = torch.tensor([[5, 6, 7]])
DECODERS = {
    "greedy": lambda m, **kw: decoders.greedy(m, PROMPT, **({"max_new_tokens": 3} | kw)),
    "sample": lambda m, **kw: decoders.sample(m, PROMPT, **({"max_new_tokens": 3} | kw)),
    "beam_search": lambda m, **kw: decoders.beam_search(m, PROMPT, **({"max_new_tokens": 3, "num_beams": 2} | kw)),
    "contrastive_search": lambda m, **kw: decoders.contrastive_search(
        m, PROMPT, **({"max_new_tokens": 3, "penalty_alpha": 0.5, "top_k": 3} | kw)),
    "diverse_beam_search": lambda m, **kw: decoders.diverse_beam_search(
        m, PROMPT, **({"max_new_tokens": 3, "num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0} | kw)),
}
FLOAT_OPTIONS = [("greedy", "repetition_penalty"), ("sample", "temperature"), ("sample", "top_p"), ("sample", "min_p"),
                 ("sample", "typical_p"), ("contrastive_search", "penalty_alpha"), ("diverse_beam_search", "diversity_penalty"),
                 ("sample", "repetition_penalty"), ("beam_search", "length_penalty"), ("beam_search", "repetition_penalty")]
INT_OPTIONS = [(name, option) for name in DECODERS
               for option in ("max_new_tokens", "min_new_tokens", "no_repeat_ngram_size", "eos_token_id", "pad_token_id")]
INT_OPTIONS += [("sample", "top_k"), ("beam_search", "num_beams"), ("beam_search", "num_return_sequences"),
                ("sample", "num_return_sequences"), ("contrastive_search", "top_k"), ("diverse_beam_search", "num_beam_groups")]


def model():
    return models()[0]


@given(st.sampled_from(FLOAT_OPTIONS), st.sampled_from([math.nan, math.inf, -math.inf]))
@settings(max_examples=30)
def test_any_nan_or_inf_float_option_is_refused(decoder_option, value):
    decoder, option = decoder_option
    with pytest.raises(ValueError, match=rf"{option} must be finite, got"):
        DECODERS[decoder](model(), **{option: value})


not_an_int = st.one_of(st.booleans(), st.floats(allow_nan=False).filter(lambda x: x != int(x) if math.isfinite(x) else True),
                       st.integers(0, 5).map(float), st.text(max_size=3), st.none())


@given(st.sampled_from(INT_OPTIONS), not_an_int)
@settings(max_examples=60)
def test_any_bool_float_or_string_where_an_int_belongs_is_refused(decoder_option, value):
    decoder, option = decoder_option
    if value is None and option in ("eos_token_id", "pad_token_id"):
        return  # None is their "off"
    with pytest.raises(ValueError, match=rf"{option} must be an integer, got"):
        DECODERS[decoder](model(), **{option: value})


@given(st.sampled_from(list(DECODERS)), st.one_of(st.floats(allow_nan=True).filter(lambda x: x not in (0, 1)),
                                                  st.integers().filter(lambda x: x not in (0, 1))))
@settings(max_examples=40)
def test_any_mask_value_but_0_and_1_is_refused(decoder, value):
    mask = torch.tensor([[1.0, value, 1.0]], dtype=torch.float64)  # in float32 a tiny value would round to 0
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        DECODERS[decoder](model(), attention_mask=mask)


@pytest.mark.parametrize("call, message", [
    (lambda m: decoders.beam_search(m, PROMPT, num_beams=0, max_new_tokens=3), r"num_beams must be in \[1, 64\], got 0"),
    (lambda m: decoders.beam_search(m, PROMPT, num_beams=65, max_new_tokens=3), r"num_beams must be in \[1, 64\], got 65"),
    (lambda m: decoders.beam_search(m, PROMPT, num_beams=2, num_return_sequences=3, max_new_tokens=3),
     r"num_return_sequences must be in \[1, 2\]"),
    (lambda m: decoders.beam_search(m, PROMPT, num_beams=2, early_stopping="sometimes", max_new_tokens=3), "early_stopping"),
    (lambda m: decoders.beam_search(m, PROMPT, num_beams=2, early_stopping=1, max_new_tokens=3), "early_stopping"),
    (lambda m: decoders.beam_search(m, PROMPT, num_beams=2, max_new_tokens=0), "max_new_tokens must be >= 1 for beam"),
    (lambda m: decoders.beam_search(m, PROMPT, num_beams=2, max_new_tokens=3, length_penalty=11.0),
     r"length_penalty must be in \[-10, 10\]"),
    (lambda m: decoders.beam_search(m, PROMPT.repeat(10**6, 1), num_beams=64, max_new_tokens=3), "beam search over .* needs"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, top_p=0.0), r"top_p must be in \(0, 1\]"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, top_p=1.5), r"top_p must be in \(0, 1\]"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, temperature=-0.1), r"temperature must be in \[0, 1e\+06\]"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, temperature=1e-45), r"temperature must be 0 \(greedy\) or in"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, top_k=-1), r"top_k must be in \[0, inf\)"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, generator=0), "generator must be a torch.Generator"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=-1), r"max_new_tokens must be in \[0, inf\)"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, repetition_penalty=0.0), r"repetition_penalty must be in \[1e-06"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, repetition_penalty=1e-45), r"repetition_penalty must be in \[1e-06"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, eos_token_id=99), r"eos_token_id must be in \[0, 63\], got 99"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, eos_token_id=3.5), "eos_token_id must be an integer, got float 3.5"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, eos_token_id=[]), "eos_token_id is an empty list"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, eos_token_id=[3, 70]), r"eos_token_id\[1\] must be in \[0, 63\]"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, pad_token_id=2.7), "pad_token_id must be an integer, got float 2.7"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=True), "max_new_tokens must be an integer, got bool True"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens="3"), "max_new_tokens must be an integer, got str '3'"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, on_token=5), "on_token must be a function"),
    (lambda m: decoders.greedy(m, torch.tensor([[5, 64]]), max_new_tokens=3), r"token id 64 is outside the vocabulary \[0, 64\)"),
    (lambda m: decoders.greedy(m, torch.tensor([[True, False]]), max_new_tokens=3), "input_ids must hold integer token ids"),
    (lambda m: decoders.greedy(m, [[5, 6]], max_new_tokens=3), "input_ids must be a .* tensor of token ids, got list"),
    (lambda m: decoders.beam_search(m, torch.tensor([[-3]]), num_beams=2, max_new_tokens=3), "token id -3"),
    (lambda m: decoders.greedy(m, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=3), "input_ids is empty"),
    (lambda m: decoders.sample(m, torch.zeros(0, 4, dtype=torch.long), max_new_tokens=3), "input_ids is empty"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=62), r"exceeds the model's context of 64 positions"),
    (lambda m: decoders.beam_search(m, PROMPT, num_beams=2, max_new_tokens=62), "context of 64"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, attention_mask=torch.tensor([[1, 1, 0]])), "left-padded"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, attention_mask=torch.tensor([[0, 0, 0]])), "row 0 .* no real token"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, attention_mask=[[1, 1, 1]]), "attention_mask must be a tensor"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, attention_mask=torch.ones(1, 4)), r"attention_mask must have shape \(1, 3\)"),
    (lambda m: decoders.greedy(object(), PROMPT, max_new_tokens=3), "model must be a minigpt GPT"),
    (lambda m: decoders.sequence_logprob(m, PROMPT, 3), "leaves no continuation to score"),
    (lambda m: decoders.sequence_logprob(m, PROMPT, 0), r"prompt_length must be in \[1, inf\)"),
    (lambda m: decoders.sequence_logprob(m, PROMPT, True), "prompt_length must be an integer"),
    (lambda m: decoders.sequence_logprob(m, PROMPT, 1, attention_mask=torch.full((1, 3), 2)), "only 0 and 1"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=2).choices(row=5), r"row must be in \[0, 0\], got 5"),
    (lambda m: decoders.diverse_beam_search(m, PROMPT, num_beams=5, num_beam_groups=2, diversity_penalty=1.0,
                                            max_new_tokens=3), r"num_beams \(5\) must be divisible by num_beam_groups \(2\)"),
    (lambda m: decoders.diverse_beam_search(m, PROMPT, num_beams=2, num_beam_groups=3, diversity_penalty=1.0,
                                            max_new_tokens=3), r"num_beam_groups must be in \[1, 2\], got 3"),
    (lambda m: decoders.diverse_beam_search(m, PROMPT, num_beams=4, num_beam_groups=2, diversity_penalty=-0.5,
                                            max_new_tokens=3), r"diversity_penalty must be in \[0, 10000\], got -0.5"),
    (lambda m: decoders.diverse_beam_search(m, PROMPT, num_beams=4, num_beam_groups=2, diversity_penalty=math.nan,
                                            max_new_tokens=3), "diversity_penalty must be finite"),
    (lambda m: decoders.contrastive_search(m, PROMPT, penalty_alpha=1.5, top_k=4, max_new_tokens=3),
     r"penalty_alpha must be in \[0, 1\], got 1.5"),
    (lambda m: decoders.contrastive_search(m, PROMPT, penalty_alpha=-0.1, top_k=4, max_new_tokens=3), "penalty_alpha must be in"),
    (lambda m: decoders.contrastive_search(m, PROMPT, penalty_alpha=0.6, top_k=0, max_new_tokens=3),
     r"top_k must be in \[1, 64\], got 0"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, min_p=1.5), r"min_p must be in \[0, 1\], got 1.5"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, min_p=-0.1), r"min_p must be in \[0, 1\]"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, typical_p=0.0), r"typical_p must be in \(0, 1\], got 0"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, typical_p=1.2), r"typical_p must be in \(0, 1\]"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, num_return_sequences=0), r"num_return_sequences must be in \[1, inf\)"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call(model())


log_uniform = st.floats(math.log(1e-6), math.log(1e6)).map(math.exp)


@given(temperature=log_uniform, repetition_penalty=log_uniform, length_penalty=st.floats(-10, 10),
       seed=st.integers(0, 2**16))
@settings(max_examples=25)
def test_every_allowed_value_decodes_without_nan(temperature, repetition_penalty, length_penalty, seed):
    """The ranges are where the arithmetic stays finite: no allowed value yields a NaN score."""
    ours = model()
    ids, mask = prompts(seed)
    sampled = decoders.sample(ours, ids, attention_mask=mask, max_new_tokens=6, temperature=temperature,
                              repetition_penalty=repetition_penalty, generator=torch.Generator().manual_seed(seed))
    beams = decoders.beam_search(ours, ids, attention_mask=mask, max_new_tokens=6, num_beams=3, pad_token_id=PAD,
                                 length_penalty=length_penalty, repetition_penalty=repetition_penalty)
    for out in (sampled, beams):
        assert not out.scores.isnan().any() and not out.entropy.isnan().any()
    assert torch.isfinite(beams.sequence_scores).all()
