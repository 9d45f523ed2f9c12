"""The reference is one pinned release, and where minigpt differs from it on purpose the difference
is shown here (the README lists the same differences)."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
import torch

import decoders
from decoders import processors
from decoding_models import PAD, models, prompts
from helpers import positions

ROOT = Path(__file__).resolve().parents[1]


def pinned() -> dict[str, str]:
    """package -> the exact version pyproject's test extra pins."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    pins = [line.split(";")[0].strip() for line in extra if "==" in line]
    return dict(pin.split("==") for pin in pins)


def test_the_references_are_pinned_and_installed():
    pins = pinned()
    assert {"transformers", "tiktoken"} <= set(pins)
    for package, version in pins.items():
        assert importlib.metadata.version(package) == version, f"{package} is not the pinned {version}"


def test_a_left_padded_row_gets_its_own_logits_in_the_plain_forward():
    """transformers counts positions over padding in a plain forward (only generate() derives them
    from the mask); minigpt derives them from the mask everywhere."""
    ours, reference = models()
    ids, mask = prompts(0)
    row, real = 1, mask[1].bool()  # a row with 3 padding positions
    with torch.no_grad():
        alone = ours(ids[row : row + 1, real])[0]
        assert (ours(ids, attention_mask=mask)[row, real] - alone).abs().max() <= 1e-5
        theirs_plain = reference(ids, attention_mask=mask).logits[row, real]
        theirs_positioned = reference(ids, attention_mask=mask, position_ids=positions(mask)).logits[row, real]
    assert (theirs_plain - alone).abs().max() > 1e-2
    assert (theirs_positioned - alone).abs().max() <= 1e-5


def test_ngram_blocking_never_counts_padding_as_history():
    """The row's real tokens are 5, 6, PAD: it holds no bigram starting with PAD, so nothing is
    banned. transformers also sees the padding PAD PAD 5 and bans PAD and 5."""
    from transformers import NoRepeatNGramLogitsProcessor

    tokens = torch.tensor([[PAD, PAD, 5, 6, PAD]])
    real = torch.tensor([[False, False, True, True, True]])
    ours = processors.ban_repeated_ngrams(torch.zeros(1, 64), tokens, real, 2)
    theirs = NoRepeatNGramLogitsProcessor(2)(tokens, torch.zeros(1, 64))
    assert ours.isinf().nonzero().flatten().tolist() == []
    assert theirs[0].isinf().nonzero().flatten().tolist() == [PAD, 5]


def test_top_k_is_off_unless_asked_while_generate_defaults_to_50():
    ours, reference = models()
    ids, mask = prompts(3)
    mine = decoders.sample(ours, ids, attention_mask=mask, max_new_tokens=12, top_k=50, pad_token_id=PAD,
                           generator=torch.Generator().manual_seed(7))
    torch.manual_seed(7)
    theirs = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=True, pad_token_id=PAD)
    assert torch.equal(mine.sequences, theirs)


def test_temperature_zero_is_greedy_where_generate_refuses_it():
    ours, reference = models()
    ids, mask = prompts(4)
    sampled = decoders.sample(ours, ids, attention_mask=mask, max_new_tokens=8, temperature=0.0)
    assert torch.equal(sampled.sequences, decoders.greedy(ours, ids, attention_mask=mask, max_new_tokens=8).sequences)
    with pytest.raises(ValueError, match="temperature"):
        reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=True, temperature=0.0,
                           pad_token_id=PAD)


@pytest.mark.parametrize("option", [{"temperature": 1e-45}, {"repetition_penalty": 1e-45}])
def test_values_that_make_generate_fail_inside_torch_are_refused_up_front(option):
    ours, reference = models()
    ids, mask = prompts(5)
    with pytest.raises(ValueError, match=next(iter(option))):
        decoders.sample(ours, ids, attention_mask=mask, max_new_tokens=4, **option)
    with pytest.raises(RuntimeError, match="probability tensor contains either `inf`, `nan`"):
        reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=True, pad_token_id=PAD,
                           **option)


def test_a_mask_of_other_values_than_0_and_1_is_refused_where_transformers_accepts_it():
    ours, reference = models()
    ids, mask = prompts(6)
    with pytest.raises(ValueError, match="only 0 and 1, got 2"):
        ours(ids, attention_mask=mask * 2)
    with torch.no_grad():
        reference(ids, attention_mask=mask * 2)  # no complaint
