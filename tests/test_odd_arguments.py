"""Any value for any argument of a public entry point either works or is a ValueError: no
TypeError, IndexError or RuntimeError from deep inside torch or Python.

Hypothesis draws the values from everything a confused or hostile caller might pass: None, bools,
huge and negative integers, NaN and infinities, tiny and huge floats, strings, lists, and tensors
of the wrong shape or dtype.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decoders
from decoding_models import models, prompts
from minigpt import GPT, GPTConfig, KVCache, Tokenizer
from minigpt.fast import optimize, pack_for_cpu

odd = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.sampled_from([0, 1, 2, -1, 10**18]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-45, 1e45, 0.5, 2.5]),
    st.text(max_size=5), st.lists(st.integers(-3, 3), max_size=3),
    st.sampled_from([torch.tensor(1), torch.tensor([1, 2]), torch.tensor([[1.5]]), torch.zeros(2, 3, 4, dtype=torch.long),
                     torch.tensor([[True]]), torch.tensor([[1, 2]], dtype=torch.uint8), torch.ones(3, 3)]),
)


def _decoder(name):
    def call(**kwargs):
        ours, _ = models()
        ids, mask = prompts(0)
        defaults = {"attention_mask": mask, "max_new_tokens": 3} | ({"num_beams": 2} if name == "beam_search" else {})
        return getattr(decoders, name)(ours, ids, **(defaults | kwargs))
    return call


OPTIONS = {
    "greedy": ["max_new_tokens", "eos_token_id", "pad_token_id", "min_new_tokens", "no_repeat_ngram_size",
               "repetition_penalty", "on_token", "attention_mask"],
    "sample": ["temperature", "top_k", "top_p", "generator", "max_new_tokens", "eos_token_id", "attention_mask"],
    "beam_search": ["num_beams", "length_penalty", "early_stopping", "num_return_sequences", "max_new_tokens",
                    "eos_token_id", "pad_token_id", "min_new_tokens", "repetition_penalty", "attention_mask"],
}
CALLS = [(f"{name}({option}=...)", lambda value, name=name, option=option: _decoder(name)(**{option: value}))
         for name, options in OPTIONS.items() for option in options]
CALLS += [
    ("model(input_ids)", lambda value: models()[0](value)),
    ("model(ids, attention_mask)", lambda value: models()[0](prompts(0)[0], attention_mask=value)),
    ("model(ids, only_last)", lambda value: models()[0](prompts(0)[0], only_last=value)),
    ("model(ids, cache)", lambda value: models()[0](prompts(0)[0], cache=value)),
    ("model.trace(ids, head_mask)", lambda value: models()[0].trace(prompts(0)[0], head_mask=value)),
    ("model.new_cache(batch, 4)", lambda value: models()[0].new_cache(value, 4)),
    ("model.new_cache(1, max_length)", lambda value: models()[0].new_cache(1, value)),
    ("KVCache(dtype=)", lambda value: KVCache(1, 1, 1, 1, 1, dtype=value)),
    ("KVCache(device=)", lambda value: KVCache(1, 1, 1, 1, 1, device=value)),
    ("cache.reorder(rows)", lambda value: models()[0].new_cache(2, 4).reorder(value)),
    ("cache.take_rows(rows)", lambda value: models()[0].new_cache(2, 4).take_rows(value)),
    ("sequence_logprob(sequences)", lambda value: decoders.sequence_logprob(models()[0], value, 1)),
    ("sequence_logprob(prompt_length)", lambda value: decoders.sequence_logprob(models()[0], prompts(0)[0], value)),
    ("Generation.choices(row)", lambda value: decoders.greedy(models()[0], prompts(0)[0], max_new_tokens=2).choices(value)),
    ("GPTConfig(n_head=)", lambda value: GPTConfig(n_head=value)),
    ("GPTConfig(layer_norm_epsilon=)", lambda value: GPTConfig(layer_norm_epsilon=value)),
    ("GPTConfig.preset(name)", lambda value: GPTConfig.preset(value)),
    ("GPTConfig.from_hf_dict(fields)", lambda value: GPTConfig.from_hf_dict(value)),
    ("GPTConfig.from_hf_dict({n_layer: })", lambda value: GPTConfig.from_hf_dict({"n_layer": value})),
    ("pack_for_cpu(model)", lambda value: pack_for_cpu(value)),
    ("optimize(model)", lambda value: optimize(value)),
    ("optimize(model, weights=)", lambda value: optimize(GPT(GPTConfig.preset("tiny")), weights=value)),
    ("Tokenizer.encode(text)", lambda value: TOKENIZER.encode(value)),
    ("Tokenizer.encode_batch(texts)", lambda value: TOKENIZER.encode_batch(value)),
    ("Tokenizer.decode(ids)", lambda value: TOKENIZER.decode(value)),
    ("Tokenizer.from_files(path, path)", lambda value: Tokenizer.from_files(value, value)),
]
TOKENIZER = Tokenizer.gpt2()


@given(st.sampled_from(CALLS), odd)
@settings(max_examples=600)
def test_any_value_works_or_is_a_value_error(call, value):
    name, function = call
    try:
        function(value)
    except ValueError:
        pass  # a clear refusal: what we want for a bad value
    # anything else propagates and fails the test, naming the call and the value

