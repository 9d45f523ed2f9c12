"""Our decoders against transformers' generate() on the same random-weight checkpoint, driving
our model as loaded, made fast (minigpt.fast.optimize, float32) and with its decoding step
compiled too (`ours` fixture).

Sequences must be equal; beam search's sequence_scores within 1e-4 (sums of ~10 float32
log-probabilities of magnitude up to ~50, each differing by ~1e-6 between the implementations;
measured differences are below 1e-4).
"""

from __future__ import annotations

import itertools

import pytest
import torch

import decoders
from decoding_models import PAD, fast_model, frequent_token, models, prompts

SCORE_TOL = 1e-4


@pytest.fixture(params=["loaded", "fast", "compiled"])
def ours(request):
    return models()[0] if request.param == "loaded" else fast_model(compiled=request.param == "compiled")


def generate(**kwargs):
    _, reference = models()
    return reference.generate(**kwargs, return_dict_in_generate=True, output_scores=True)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("options", [
    {}, {"repetition_penalty": 1.5}, {"no_repeat_ngram_size": 2}, {"min_new_tokens": 5},
    {"repetition_penalty": 0.7, "no_repeat_ngram_size": 3, "min_new_tokens": 2},
])
def test_greedy_equals_generate(seed, options, ours):
    ids, mask = prompts(seed)
    eos = frequent_token(ids, mask)
    mine = decoders.greedy(ours, ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD, **options)
    theirs = generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=eos,
                      pad_token_id=PAD, **options)
    assert torch.equal(mine.sequences, theirs.sequences)
    # transformers' scores are the processed logits; ours the processed log-probability chosen
    processed = torch.stack(theirs.scores, dim=1).log_softmax(-1)  # (b new v)
    chosen = processed.gather(-1, mine.new_tokens[..., None])[..., 0]
    chosen = torch.where(mine.attention_mask[:, ids.shape[1]:].bool(), chosen, 0.0)  # 0 once a row finished
    assert (mine.scores - chosen).abs().max() <= SCORE_TOL


def test_greedy_stops_when_every_row_has_finished(ours):
    ids, mask = prompts(0)
    free = decoders.greedy(ours, ids, attention_mask=mask, max_new_tokens=40).new_tokens
    in_every_row = set.intersection(*(set(row.tolist()) for row in free))
    assert in_every_row, "this test needs a token that every row generates"
    eos = min(in_every_row, key=lambda token: max(row.tolist().index(token) for row in free))
    mine = decoders.greedy(ours, ids, attention_mask=mask, max_new_tokens=40, eos_token_id=eos, pad_token_id=PAD)
    theirs = generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, do_sample=False, eos_token_id=eos, pad_token_id=PAD)
    assert torch.equal(mine.sequences, theirs.sequences)
    lengths = mine.new_lengths.tolist()
    assert max(lengths) == mine.new_tokens.shape[1] < 40  # stopped early, at the last row's EOS
    for row, n in enumerate(lengths):
        assert mine.new_tokens[row, n - 1] == eos
        assert torch.all(mine.new_tokens[row, n:] == PAD)


BEAM_CASES = list(itertools.product([2, 3, 4], [1.0, 0.0, -1.0, 2.0], [True, False, "never"]))


@pytest.mark.parametrize("num_beams, length_penalty, early_stopping", BEAM_CASES)
def test_beam_search_equals_generate(num_beams, length_penalty, early_stopping, ours):
    ids, mask = prompts(num_beams)
    eos = frequent_token(ids, mask)
    options = dict(num_beams=num_beams, max_new_tokens=10, length_penalty=length_penalty,
                   early_stopping=early_stopping, num_return_sequences=num_beams, eos_token_id=eos)
    mine = decoders.beam_search(ours, ids, attention_mask=mask, pad_token_id=PAD, **options)
    theirs = generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=PAD, **options)
    assert torch.equal(mine.sequences, theirs.sequences)
    assert (mine.sequence_scores - theirs.sequences_scores).abs().max() <= SCORE_TOL


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("options", [
    {"num_return_sequences": 1}, {"num_return_sequences": 3}, {"no_repeat_ngram_size": 2, "num_return_sequences": 2},
    {"repetition_penalty": 1.3, "min_new_tokens": 4}, {"eos_token_id": None},
])
def test_beam_search_options_equal_generate(seed, options, ours):
    ids, mask = prompts(10 + seed, lengths=(4, 7))
    options = {"eos_token_id": frequent_token(ids, mask)} | options
    mine = decoders.beam_search(ours, ids, attention_mask=mask, num_beams=4, max_new_tokens=9, pad_token_id=PAD, **options)
    theirs = generate(input_ids=ids, attention_mask=mask, num_beams=4, max_new_tokens=9, do_sample=False, pad_token_id=PAD,
                      **options)
    assert torch.equal(mine.sequences, theirs.sequences)
    assert (mine.sequence_scores - theirs.sequences_scores).abs().max() <= SCORE_TOL


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("options", [
    {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
    {"temperature": 0.7, "top_k": 0, "top_p": 1.0},
    {"temperature": 1.5, "top_k": 5, "top_p": 1.0},
    {"temperature": 1.0, "top_k": 0, "top_p": 0.8},
    {"temperature": 0.9, "top_k": 10, "top_p": 0.9, "repetition_penalty": 1.2, "no_repeat_ngram_size": 2},
    {"temperature": 2.0, "top_k": 0, "top_p": 0.95, "min_new_tokens": 6},
    {"top_k": 0, "min_p": 0.1}, {"top_k": 0, "min_p": 0.3, "temperature": 1.5}, {"top_k": 0, "typical_p": 0.5},
    {"top_k": 20, "typical_p": 0.9}, {"top_k": 0, "min_p": 0.05, "typical_p": 0.8, "top_p": 0.95},
    {"top_k": 0, "num_return_sequences": 3}, {"top_k": 0, "num_return_sequences": 2, "top_p": 0.9},
])
def test_seeded_sampling_equals_generate(seed, options, ours):
    """Also min-p, typical-p and several samples per prompt, against the pinned transformers (5.x)."""
    ids, mask = prompts(20 + seed)
    eos = frequent_token(ids, mask)
    mine = decoders.sample(ours, ids, attention_mask=mask, max_new_tokens=15, eos_token_id=eos, pad_token_id=PAD,
                           generator=torch.Generator().manual_seed(seed), **options)
    torch.manual_seed(seed)
    theirs = generate(input_ids=ids, attention_mask=mask, max_new_tokens=15, do_sample=True, eos_token_id=eos,
                      pad_token_id=PAD, **options)
    assert torch.equal(mine.sequences, theirs.sequences)


@pytest.mark.parametrize("decoder", ["greedy", "beam_search", "sample"])
def test_a_list_of_eos_ids_stops_a_row_at_any_of_them(decoder, ours):
    """transformers takes a list of EOS ids; so do we, with the same result."""
    ids, mask = prompts(30)
    free = decoders.greedy(ours, ids, attention_mask=mask, max_new_tokens=6).new_tokens
    eos = [int(free[0, 2]), int(free[1, 1])]  # two tokens that end different rows early
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD)
    if decoder == "sample":
        mine = decoders.sample(ours, generator=torch.Generator().manual_seed(3), **kwargs)
        torch.manual_seed(3)
        theirs = generate(do_sample=True, top_k=0, **kwargs)
    else:
        beams = {"num_beams": 3} if decoder == "beam_search" else {}
        mine = getattr(decoders, decoder)(ours, **beams, **kwargs)
        theirs = generate(do_sample=False, **beams, **kwargs)
    assert torch.equal(mine.sequences, theirs.sequences)
    if decoder == "beam_search":
        assert (mine.sequence_scores - theirs.sequences_scores).abs().max() <= SCORE_TOL
    else:
        assert mine.new_lengths.min() < 10  # some row did stop early
