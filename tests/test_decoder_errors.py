"""Every bad argument gets a ValueError that names it."""

from __future__ import annotations

import pytest
import torch

import decoders
from decoding_models import models

PROMPT = torch.tensor([[5, 6, 7]])


@pytest.mark.parametrize("call, message", [
    (lambda m: decoders.beam_search(m, PROMPT, num_beams=0, max_new_tokens=3), "num_beams must be an integer >= 1"),
    (lambda m: decoders.beam_search(m, PROMPT, num_beams=2, num_return_sequences=3, max_new_tokens=3),
     r"num_return_sequences must be in \[1, num_beams=2\]"),
    (lambda m: decoders.beam_search(m, PROMPT, num_beams=2, early_stopping="sometimes", max_new_tokens=3), "early_stopping"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, top_p=0.0), r"top_p must be in \(0, 1\]"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, top_p=1.5), r"top_p must be in \(0, 1\]"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, temperature=-0.1), "temperature must be >= 0"),
    (lambda m: decoders.sample(m, PROMPT, max_new_tokens=3, top_k=-1), "top_k must be an integer >= 0"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
    (lambda m: decoders.greedy(m, torch.tensor([[5, 64]]), max_new_tokens=3), r"token id 64 is outside the vocabulary \[0, 64\)"),
    (lambda m: decoders.beam_search(m, torch.tensor([[-3]]), num_beams=2, max_new_tokens=3), "token id -3"),
    (lambda m: decoders.greedy(m, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=3), "the prompt is empty"),
    (lambda m: decoders.sample(m, torch.zeros(0, 4, dtype=torch.long), max_new_tokens=3), "the prompt is empty"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=62), r"exceeds the model's context of 64 positions"),
    (lambda m: decoders.beam_search(m, PROMPT, num_beams=2, max_new_tokens=62), "context of 64"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, eos_token_id=99), "eos_token_id=99 is outside"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (lambda m: decoders.greedy(m, PROMPT, max_new_tokens=3, attention_mask=torch.tensor([[1, 1, 0]])), "left-padded"),
    (lambda m: decoders.sequence_logprob(m, PROMPT, 3), "prompt_length must be in"),
])
def test_bad_input_is_named(call, message):
    ours, _ = models()
    with pytest.raises(ValueError, match=message):
        call(ours)
