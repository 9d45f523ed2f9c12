"""Contrastive search and diverse beam search against transformers 4.55.4, the last release whose
generate() runs them (5.x moved both to remote code on the Hub). All reference outputs come from
one subprocess (legacy.py); each case is then a test of its own.

Tolerances: tokens equal; diverse beam search's sequence_scores within 1e-4 relative (sums of ~10
float32 log-probabilities; 4.55.4 adds them up in Python floats, we in float32).
"""

from __future__ import annotations

import itertools

import pytest
import torch

import decoders
from decoding_models import PAD, checkpoint, frequent_token, models, prompts
from legacy import generate_455

CONTRASTIVE = [dict(penalty_alpha=alpha, top_k=k, seed=seed)
               for alpha, k, seed in itertools.product([0.0, 0.6, 1.0], [1, 4, 10], [0, 1])]
DIVERSE = [dict(num_beams=beams, num_beam_groups=groups, diversity_penalty=penalty, length_penalty=length,
                early_stopping=stopping, num_return_sequences=returned, seed=seed)
           for (beams, groups), penalty, length, stopping, (returned, seed) in itertools.product(
               [(4, 2), (6, 3), (6, 2)], [0.5, 1.5], [1.0, 0.0, 2.0], [False, True, "never"], [(1, 0), ("all", 1)])]


def inputs(seed: int, eos_early: bool = True):
    ids, mask = prompts(40 + seed)
    eos = frequent_token(ids, mask) if eos_early else None
    return ids, mask, eos


def case(options: dict) -> tuple[dict, dict]:
    """(our keyword arguments, generate()'s) for one case."""
    options = dict(options)
    ids, mask, eos = inputs(options.pop("seed"))
    if options.get("num_return_sequences") == "all":
        options["num_return_sequences"] = options["num_beams"]
    ours = dict(input_ids=ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD, **options)
    theirs = dict(max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD, do_sample=False, **options)
    return ours, {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "kwargs": theirs}


@pytest.fixture(scope="module")
def reference():
    """Every case's 4.55.4 output, computed in one subprocess: name -> output."""
    named = {f"contrastive-{i}": case(o)[1] for i, o in enumerate(CONTRASTIVE)}
    named |= {f"diverse-{i}": case(o)[1] for i, o in enumerate(DIVERSE)}
    directory, _ = checkpoint()
    return dict(zip(named, generate_455(directory, list(named.values()))))


@pytest.mark.parametrize("index", range(len(CONTRASTIVE)), ids=[str(o) for o in CONTRASTIVE])
def test_contrastive_search_equals_455(reference, index):
    ours, _ = case(CONTRASTIVE[index])
    mine = decoders.contrastive_search(models()[0], **ours)
    theirs = torch.tensor(reference[f"contrastive-{index}"]["sequences"])
    assert torch.equal(mine.sequences, theirs)


def test_contrastive_cases_reach_eos_early_and_differ_from_greedy(reference):
    """The grid is not vacuous: rows stop at EOS before max_new_tokens, and a positive penalty_alpha
    with several candidates changes the tokens."""
    ours, _ = case(CONTRASTIVE[0])
    greedy = decoders.greedy(models()[0], **{k: v for k, v in ours.items() if k not in ("penalty_alpha", "top_k")})
    assert greedy.new_lengths.min() < 10
    differ = [o for i, o in enumerate(CONTRASTIVE) if o["penalty_alpha"] > 0 and o["top_k"] > 1 and o["seed"] == 0
              and not torch.equal(torch.tensor(reference[f"contrastive-{i}"]["sequences"]), greedy.sequences)]
    assert differ


@pytest.mark.parametrize("index", range(len(DIVERSE)), ids=[str(o) for o in DIVERSE])
def test_diverse_beam_search_equals_455(reference, index):
    ours, _ = case(DIVERSE[index])
    mine = decoders.diverse_beam_search(models()[0], **ours)
    theirs = reference[f"diverse-{index}"]
    assert torch.equal(mine.sequences, torch.tensor(theirs["sequences"]))
    expected = torch.tensor(theirs["sequences_scores"])
    assert ((mine.sequence_scores - expected).abs() / expected.abs().clamp(min=1e-6)).max() <= 1e-4
