"""The decoders' design: one options object, the beam-search tree, what happens when the processors
leave no token, the record sizes refused before allocating, and a clear word for transformers habits."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decoders
from decoders.records import DROPPED, FINISHED
from decoding_models import PAD, frequent_token, models, prompts
from minigpt import GPT, GPTConfig


def model():
    return models()[0]


# ---- the options object ---------------------------------------------------------------------

def test_an_options_object_decodes_as_its_keywords_do():
    ids, mask = prompts(3)
    keywords = dict(eos_token_id=frequent_token(ids, mask), pad_token_id=PAD, min_new_tokens=2, no_repeat_ngram_size=2,
                    repetition_penalty=1.3, alternatives=3, keep_logprobs=True)
    options = decoders.DecodingOptions(**keywords)
    for decode in (lambda **kw: decoders.greedy(model(), ids, attention_mask=mask, max_new_tokens=8, **kw),
                   lambda **kw: decoders.beam_search(model(), ids, attention_mask=mask, num_beams=3, max_new_tokens=8, **kw),
                   lambda **kw: decoders.contrastive_search(model(), ids, attention_mask=mask, penalty_alpha=0.6, top_k=3,
                                                            max_new_tokens=8, **kw)):
        a, b = decode(**keywords), decode(options=options)
        assert torch.equal(a.sequences, b.sequences) and torch.equal(a.step_logprobs, b.step_logprobs)
    with pytest.raises(ValueError, match="give the shared options once: min_new_tokens"):
        decoders.greedy(model(), ids, max_new_tokens=3, options=options, min_new_tokens=1)
    with pytest.raises(ValueError, match="options must be a decoders.DecodingOptions"):
        decoders.greedy(model(), ids, max_new_tokens=3, options={"min_new_tokens": 1})


ODD = st.sampled_from([math.nan, math.inf, -1, -0.5, 2.5, True, "3", None, [], [3, True], 10**12])


@given(name=st.sampled_from(["eos_token_id", "pad_token_id", "min_new_tokens", "no_repeat_ngram_size",
                             "repetition_penalty", "alternatives", "keep_logprobs"]), value=ODD)
@settings(max_examples=60)
def test_every_record_and_shared_option_is_a_result_or_one_value_error(name, value):
    ids, mask = prompts(1)
    for decode in (lambda: decoders.greedy(model(), ids, attention_mask=mask, max_new_tokens=3, **{name: value}),
                   lambda: decoders.beam_search(model(), ids, attention_mask=mask, num_beams=2, max_new_tokens=3,
                                                **{name: value}),
                   lambda: decoders.sample(model(), ids, attention_mask=mask, max_new_tokens=3, **{name: value}),
                   lambda: decoders.contrastive_search(model(), ids, attention_mask=mask, penalty_alpha=0.5, top_k=2,
                                                       max_new_tokens=3, **{name: value}),
                   lambda: decoders.diverse_beam_search(model(), ids, attention_mask=mask, num_beams=2, num_beam_groups=2,
                                                        diversity_penalty=1.0, max_new_tokens=3, **{name: value})):
        try:
            out = decode()
        except ValueError as err:
            assert name in str(err)
            continue
        assert out.sequences.shape[0] == 3 and not out.scores.isnan().any()


def test_record_sizes_are_refused_before_allocating():
    big = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=4, vocab_size=50257, n_positions=1024))
    ids = torch.zeros(128, 4, dtype=torch.long)  # 128 rows x 1000 steps x 50257 log-probs: 26 GB
    with pytest.raises(ValueError, match="1000 steps of 128 rows with their records needs"):
        decoders.greedy(big, ids, max_new_tokens=1000, keep_logprobs=True)
    with pytest.raises(ValueError, match="beam search over 6400 beams .* needs"):
        decoders.beam_search(big, ids, num_beams=50, max_new_tokens=1000, keep_logprobs=True)
    with pytest.raises(ValueError, match="1000000000000 sequences of each of 128 prompts needs"):
        decoders.sample(big, ids, max_new_tokens=1, num_return_sequences=10**12)
    with pytest.raises(ValueError, match=r"alternatives must be in \[0, 64\]"):
        decoders.greedy(model(), ids, max_new_tokens=1, alternatives=65)


# ---- the beam-search tree -------------------------------------------------------------------

def walk(tree: decoders.BeamTree, prompt: int, path: list[int]) -> list[tuple[int, float]]:
    """The (token, running score) of each step along a path, checking that it is one: the candidate
    of each step extends the beam the candidate of the step before went on as."""
    steps = []
    for n, candidate in enumerate(path):
        step = tree.steps[n]
        if n:
            assert int(tree.steps[n - 1].fate[prompt, path[n - 1]]) == int(step.parent[prompt, candidate])
        steps.append((int(step.token[prompt, candidate]), float(step.score[prompt, candidate])))
    return steps


@pytest.mark.parametrize("groups", [1, 2])
def test_returned_sequences_are_paths_of_the_tree_whose_scores_add_up(groups):
    ids, mask = prompts(4)
    eos = frequent_token(ids, mask)
    common = dict(attention_mask=mask, max_new_tokens=7, eos_token_id=eos, pad_token_id=PAD, num_return_sequences=2,
                  keep_tree=True)
    if groups == 1:
        out = decoders.beam_search(model(), ids, num_beams=4, **common)
    else:
        out = decoders.diverse_beam_search(model(), ids, num_beams=4, num_beam_groups=2, diversity_penalty=0.5, **common)
    assert out.tree is not None and out.paths.shape == out.scores.shape
    for row in range(out.sequences.shape[0]):
        prompt, length = row // 2, int(out.new_lengths[row])
        steps = walk(out.tree, prompt, out.paths[row, :length].tolist())
        assert [token for token, _ in steps] == out.new_tokens[row, :length].tolist()
        running = [score for _, score in steps]
        # each step's running score is the last one's plus the token's processed log-prob
        assert running[-1] == pytest.approx(float(out.scores[row, :length].sum()), abs=1e-4)
        assert running[-1] / length == pytest.approx(float(out.sequence_scores[row]), abs=1e-4)  # length_penalty 1
        assert int(out.tree.steps[length - 1].fate[prompt, out.paths[row, length - 1]]) == FINISHED or length == 7


def test_the_tree_holds_what_the_docstring_says_each_step_weighs():
    ids, mask = prompts(5)
    eos = frequent_token(ids, mask)
    for eos_ids, per_beam in (([eos], 2), ([eos, eos + 1], 3)):  # 2k candidates, or (1 + number of EOS ids) k
        out = decoders.beam_search(model(), ids, attention_mask=mask, num_beams=3, max_new_tokens=5, eos_token_id=eos_ids,
                                   keep_tree=True)
        for step in out.tree.steps:
            assert step.token.shape == (3, per_beam * 3)
            fates = step.fate
            assert bool(((fates >= 0) | (fates == FINISHED) | (fates == DROPPED)).all())
            for prompt in range(3):  # k beams go on from every step but the last
                went_on = sorted(int(f) for f in fates[prompt] if f >= 0)
                assert went_on in ([0, 1, 2], [])
    plain = decoders.beam_search(model(), ids, attention_mask=mask, num_beams=3, max_new_tokens=5)
    assert plain.tree is None and plain.paths is None  # off by default


def test_the_tree_of_a_one_beam_search_is_the_greedy_path():
    ids, mask = prompts(6)
    greedy = decoders.greedy(model(), ids, attention_mask=mask, max_new_tokens=6)
    out = decoders.beam_search(model(), ids, attention_mask=mask, num_beams=1, max_new_tokens=6, keep_tree=True)
    assert torch.equal(out.sequences, greedy.sequences)
    for n, step in enumerate(out.tree.steps):
        went_on = step.fate[:, :].eq(0)
        chosen = step.token[went_on] if n < 5 else step.token[:, 0]
        assert torch.equal(chosen, greedy.new_tokens[:, n])


# ---- when the processors leave no token ---------------------------------------------------------

def test_a_row_with_every_token_banned_stops_in_every_decoder():
    tiny = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, vocab_size=3, n_positions=32))
    ids = torch.tensor([[0, 1, 2]])
    tiny_options = dict(no_repeat_ngram_size=1, pad_token_id=0, alternatives=2)
    # n-gram blocking of size 1 bans every token already in the row: all three are, from the start
    runs = {
        "greedy": decoders.greedy(tiny, ids, max_new_tokens=4, **tiny_options),
        "sample": decoders.sample(tiny, ids, max_new_tokens=4, top_k=2, top_p=0.5,
                                  generator=torch.Generator().manual_seed(0), **tiny_options),
        "contrastive": decoders.contrastive_search(tiny, ids, max_new_tokens=4, penalty_alpha=0.6, top_k=2,
                                                   **tiny_options),
    }
    for name, out in runs.items():
        assert int(out.new_lengths[0]) == 0, name  # stopped at once, no banned token emitted
        assert not out.scores.isnan().any() and not out.entropy.isnan().any(), name
    for beams in (decoders.beam_search(tiny, ids, num_beams=2, max_new_tokens=3, **tiny_options),
                  decoders.diverse_beam_search(tiny, ids, num_beams=2, num_beam_groups=2, diversity_penalty=1.0,
                                               max_new_tokens=3, **tiny_options)):
        assert bool((beams.sequence_scores == float("-inf")).all()) and int(beams.new_lengths.sum()) == 0


def test_contrastive_search_never_chooses_a_banned_candidate():
    ids, mask = prompts(7)
    out = decoders.contrastive_search(model(), ids, attention_mask=mask, penalty_alpha=0.9, top_k=10, max_new_tokens=12,
                                      no_repeat_ngram_size=1)
    for row in range(3):
        new = out.new_tokens[row, : int(out.new_lengths[row])].tolist()
        real_prompt = ids[row][mask[row].bool()].tolist()
        assert not set(new) & set(real_prompt) and len(set(new)) == len(new)  # no token twice: each was banned after
    assert bool(torch.isfinite(out.scores).all())


# ---- transformers habits ------------------------------------------------------------------------

HABITS = [
    (lambda m, ids: decoders.greedy(m, ids, max_length=20), "greedy takes no max_length: in minigpt write max_new_tokens"),
    (lambda m, ids: decoders.greedy(m, ids, max_new_tokens=3, do_sample=True), "greedy takes no do_sample: .*decoders.sample"),
    (lambda m, ids: decoders.greedy(m, ids, max_new_tokens=3, temperature=0.7),
     r"greedy takes no temperature: in minigpt write decoders.sample\(model, ids, temperature=...\)"),
    (lambda m, ids: decoders.beam_search(m, ids, num_beams=4, max_new_tokens=3, num_beam_groups=2),
     r"beam_search takes no num_beam_groups: .*decoders.diverse_beam_search\(model, ids, num_beams=..., num_beam_groups"),
    (lambda m, ids: decoders.beam_search(m, ids, num_beams=4, max_new_tokens=3, output_scores=True),
     "beam_search takes no output_scores: .*every Generation holds scores"),
    (lambda m, ids: decoders.greedy(m, ids, max_new_tokens=3, num_beams=4), r"greedy takes no num_beams: .*decoders.beam_search"),
    (lambda m, ids: decoders.sample(m, ids, max_new_tokens=3, return_dict_in_generate=True),
     "sample takes no return_dict_in_generate: .*returns a Generation"),
    (lambda m, ids: decoders.greedy(m, ids, max_new_tokens=3, penalty_alpha=0.6), "decoders.contrastive_search"),
    (lambda m, ids: decoders.greedy(m, ids, max_new_tokens=3, streamer=print), "on_token=fn"),
    (lambda m, ids: decoders.greedy(m, ids, max_new_tokens=3, num_return_sequences=2),
     "greedy takes no num_return_sequences: .*has one answer per row"),
    (lambda m, ids: decoders.greedy(m, ids, max_new_tokens=3, top_p=0.9), r"decoders.sample\(model, ids, top_p=...\)"),
    (lambda m, ids: decoders.greedy(m, ids, max_new_tokens=3, bogus=1),
     "greedy takes no option 'bogus'; its options are max_new_tokens, attention_mask, on_token, eos_token_id"),
]


@pytest.mark.parametrize("call, message", HABITS)
def test_a_transformers_habit_gets_the_minigpt_way(call, message):
    with pytest.raises(ValueError, match=message):
        call(model(), torch.tensor([[5, 6, 7]]))

