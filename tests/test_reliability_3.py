"""Reliability III: a hook that makes a logit NaN stops greedy and sampling instead of picking from
it; a hook that returns another dtype is told so; the KV cache's `keep` refuses counts it does not
hold; a `logits` hook edits a decoding step once, as it edits one pass; a hook on what a fused
kernel never forms is an error even alone; the views refuse labels that do not match the
positions, rows that are not in the batch and things that are not what they draw; a beam tree's
returned hypotheses end as finished (diverse beam search's last running beams included); a
damaged corpus is refused when opened (before a training step); a score of an optimized model
says why it has no gradient. tests/test_views_truth.py has what the views draw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import decoders
from minigpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32)


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).eval()


def poison(logits):
    logits = logits.clone()
    logits[..., 7] = float("nan")
    return logits


@pytest.mark.parametrize("decode", [
    lambda m, ids: decoders.greedy(m, ids, max_new_tokens=4),
    lambda m, ids: decoders.sample(m, ids, max_new_tokens=4, generator=torch.Generator().manual_seed(0)),
])
def test_a_hook_that_writes_nan_into_the_logits_stops_decoding_with_a_clear_error(decode):
    net, ids = model(), torch.tensor([[1, 2, 3]])
    with net.hooks({"logits": poison}), pytest.raises(ValueError, match="logits held NaN while decoding"):
        decode(net, ids)
    assert decode(net, ids).new_tokens.shape == (1, 4)  # without the hook it decodes


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.float16])
def test_a_hook_that_returns_another_dtype_is_told_which_one_it_must_return(dtype):
    net = model()
    with net.hooks({"blocks.0.resid_mid": lambda x: x.to(dtype)}), pytest.raises(
            ValueError, match=rf"the hook at blocks.0.resid_mid returned \(1, 3, 16\) {dtype}; it must return a tensor "
                              r"of the activation's shape \(1, 3, 16\) and dtype torch.float32"):
        net(torch.tensor([[1, 2, 3]]))


@pytest.mark.parametrize("start, kept, says", [
    (0, [20], r"keep's counts must be in \[0, 5\]"),
    (-2, [1], r"keep's start must be in \[0, 5\], got -2"),
    (6, [0], r"keep's start must be in \[0, 5\], got 6"),
    (0, [0.5], "keep takes a long tensor of 1 counts"),
    (0, [1, 1], "keep takes a long tensor of 1 counts"),
    (2, [-1], r"keep's counts must be in \[0, 3\]"),
])
def test_keep_refuses_what_the_cache_does_not_hold_and_changes_nothing(start, kept, says):
    net = model()
    cache = net.new_cache(1, 8)
    net(torch.tensor([[1, 2, 3, 4, 5]]), cache=cache)
    real = cache.real.clone()
    with pytest.raises(ValueError, match=says):
        cache.keep(start, torch.tensor(kept))
    assert cache.length == 5 and torch.equal(cache.real, real)


def test_a_logits_hook_edits_each_decoding_step_once_as_it_edits_one_pass():
    """A hook adds three quarters of the first step's margin to token 9's logit. Applied once per
    pass, the cached decoder's tokens are the uncached loop's under the same hook, and token 9 does
    not win the first step; applied twice in a step (in `head` and again in the step) it would."""
    net, ids = model(), torch.tensor([[4, 8, 15, 16]])
    with torch.no_grad():
        first = net(ids)[0, -1]
    assert int(first.argmax()) != 9
    bump = 0.75 * float(first.max() - first[9])

    def nudge(logits):
        logits = logits.clone()
        logits[..., 9] += bump
        return logits

    with net.hooks({"logits": nudge}):
        cached = decoders.greedy(net, ids, max_new_tokens=6).sequences
        sequence = ids
        with torch.no_grad():
            for _ in range(6):
                sequence = torch.cat([sequence, net(sequence)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, sequence)
    assert int(cached[0, 4]) == int(first.argmax())  # the bump alone does not beat the first step's best


@pytest.mark.parametrize("point", ["blocks.0.attn.pattern", "blocks.1.attn.scores"])
def test_a_hook_alone_on_what_a_fused_kernel_never_forms_is_an_error_not_silence(point):
    from functools import partial

    from minigpt import fused_attention, gpt2_block
    torch.manual_seed(0)
    net = GPT(TINY, make_block=partial(gpt2_block, attend=fused_attention)).eval()
    seen = []
    with pytest.raises(ValueError, match=f"hook point {point} was not reached by the forward pass"):
        with net.hooks({point: seen.append}):
            net(torch.tensor([[1, 2, 3]]))
    assert seen == []
    with net.hooks({point: seen.append}):  # a block with no pass in it asks nothing of the hook
        pass


def traced():
    net = model()
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(0))
    return net, ids, net.trace(ids)


@pytest.mark.parametrize("draw", ["head_view", "model_view", "attention_maps"])
def test_a_view_refuses_labels_that_do_not_match_the_positions_and_a_row_not_in_the_batch(draw):
    pytest.importorskip("plotly")
    pytest.importorskip("matplotlib")
    from minigpt import views
    view = getattr(views.interactive if draw != "attention_maps" else views.figures, draw)
    _, _, trace = traced()
    tokens = ["a", "b", "c", "d", "e"]
    with pytest.raises(ValueError, match="tokens has 2 labels but there are 5 positions"):
        view(trace, ["a", "b"])
    with pytest.raises(ValueError, match=r"row must be in \[0, 1\], got 5"):
        view(trace, tokens, row=5)
    with pytest.raises(ValueError, match="tokens must be a list of strings"):
        view(trace, "abcde")
    view(trace, tokens, row=1)  # the right ones draw


def test_the_logit_lens_choice_and_tree_views_refuse_a_row_not_there():
    pytest.importorskip("plotly")
    pytest.importorskip("matplotlib")
    from minigpt import analysis, views
    net, ids, _ = traced()
    lens = analysis.logit_lens(net, ids)
    strings = lambda ids: [str(i) for i in ids]  # noqa: E731
    with pytest.raises(ValueError, match=r"row must be in \[0, 1\], got 2"):
        views.interactive.logit_lens_view(lens, ["a"] * 5, strings, row=2)
    with pytest.raises(ValueError, match="tokens has 4 labels but there are 5 positions"):
        views.figures.logit_lens(lens, ["a"] * 4, strings)
    out = decoders.greedy(net, ids, max_new_tokens=3, alternatives=2)
    with pytest.raises(ValueError, match=r"row must be in \[0, 1\], got -1"):
        views.interactive.choices_view(out, strings, row=-1)
    beams = decoders.beam_search(net, ids, num_beams=2, max_new_tokens=3, keep_tree=True)
    with pytest.raises(ValueError, match=r"prompt must be in \[0, 1\], got 2"):
        views.figures.beam_tree(beams, strings, prompt=2)
    with pytest.raises(ValueError, match=r"total_heads must be in \[1, inf\), got 0"):
        views.figures.pruning_curve(analysis.PruningCurve([(0, 1.0)]), 0)


@pytest.mark.parametrize("decode", [
    lambda m, ids: decoders.diverse_beam_search(m, ids, num_beams=4, num_beam_groups=2, diversity_penalty=1.0,
                                                max_new_tokens=5, num_return_sequences=4, keep_tree=True),
    lambda m, ids: decoders.beam_search(m, ids, num_beams=3, max_new_tokens=5, num_return_sequences=3, keep_tree=True),
])
def test_every_returned_hypothesis_ends_in_the_tree_as_finished(decode):
    """A returned row's last candidate joined the pool (fate FINISHED), in beam search and in diverse
    beam search, whose last step's running beams join the pool after the step (4.55.4's finalize)."""
    from decoders.records import FINISHED
    net = model()
    ids = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(3))
    out = decode(net, ids)
    returned = out.sequences.shape[0] // 2
    for row in range(out.sequences.shape[0]):
        last = int(out.new_lengths[row]) - 1
        candidate = int(out.paths[row, last])
        assert int(out.tree.steps[last].fate[row // returned, candidate]) == FINISHED, (row, last)


def corpus(tmp_path, change=None) -> Path:
    """A small prepared corpus; `change(info, directory)` damages it."""
    from minigpt.training import Document, prepare
    from weights import load_tokenizer

    prepare([Document("train", ["So foul and fair a day I have not seen. " * 20]), Document("held_out", ["Fair is foul. " * 5])],
            load_tokenizer("gpt2"), tmp_path)
    info = json.loads((tmp_path / "corpus.json").read_text())
    if change is not None:
        change(info, tmp_path)
        (tmp_path / "corpus.json").write_text(json.dumps(info))
    return tmp_path


def bad_id(info, directory):
    with (directory / "train.bin").open("r+b") as file:
        file.write(np.array([50257], dtype=np.uint16).tobytes())  # one past GPT-2's last token


@pytest.mark.parametrize("change, says", [
    (lambda info, d: info.pop("bytes"), "no count of bytes for each split"),
    (lambda info, d: info.update(eot_id=70000), r"eot_id \(70000\) is not a token of its vocabulary of 50257"),
    (lambda info, d: info.update(eot_id=True), r"eot_id \(True\) is not a token"),
    (bad_id, "train.bin holds token id 50257, past its vocabulary of 50257"),
])
def test_a_damaged_corpus_is_refused_when_opened_not_after_training(tmp_path, change, says):
    from minigpt.training import TokenCorpus

    directory = corpus(tmp_path, change)
    with pytest.raises(ValueError, match=says):
        TokenCorpus.open(directory)


def test_a_named_pipe_as_corpus_json_is_refused_not_waited_on(tmp_path):
    from minigpt.training import TokenCorpus

    directory = corpus(tmp_path)
    (directory / "corpus.json").unlink()
    os.mkfifo(directory / "corpus.json")
    with pytest.raises(ValueError, match="its corpus.json is not a regular file"):
        TokenCorpus.open(directory)


def test_train_on_a_corpus_without_byte_counts_stops_before_the_first_step_and_writes_nothing(tmp_path):
    directory = corpus(tmp_path / "corpus", lambda info, d: info.pop("bytes"))
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(ROOT / "scripts/train.py"), "--data", str(directory), "--out", str(out),
                           "--steps", "2", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block", "16"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "no count of bytes" in done.stderr and not out.exists()


def test_a_score_of_an_optimized_model_says_why_it_has_no_gradient():
    from minigpt.fast import optimize

    net = model()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    fast = optimize(model(), weights="int8")
    score = decoders.sequence_logprob(fast, ids, 3)
    with torch.no_grad():
        assert torch.equal(score.detach(), decoders.sequence_logprob(fast, ids, 3))  # the value as without the guard
    with pytest.raises(ValueError, match="no weight of the model requires one. An optimized model"):
        score.sum().backward()
    decoders.sequence_logprob(net, ids, 3).sum().backward()  # the readable model's has its gradient
    assert net.wte.weight.grad is not None


@pytest.mark.parametrize("call, says", [
    (lambda v, f, t: v.head_view([[1, 2]], ["a"]), "trace must be what model.trace"),
    (lambda v, f, t: f.attention_maps({"attentions": []}, ["a"]), "trace must be what model.trace"),
    (lambda v, f, t: v.logit_lens_view([[1.0]], ["a"], str), "lens must be analysis.logit_lens's"),
    (lambda v, f, t: f.logit_lens(torch.zeros(3, 5), ["a"], str), r"got shape \(3, 5\)"),
    (lambda v, f, t: v.choices_view([1, 2], str), "generation must be what a decoder returns"),
    (lambda v, f, t: f.beam_tree(None, str), "generation must be what a decoder returns"),
    (lambda v, f, t: f.head_heatmap([[0.1]], "x", "y"), "values must be a"),
    (lambda v, f, t: f.pruning_curve([(0, 1.0)], 4), "curve must be what analysis.prune_by_importance returns"),
    (lambda v, f, t: v.head_view(t, ["a"] * 5).save(None), "save takes a file path, got NoneType"),
])
def test_a_view_given_the_wrong_kind_of_thing_says_what_it_wants(call, says):
    pytest.importorskip("plotly")
    pytest.importorskip("matplotlib")
    from minigpt import views
    with pytest.raises(ValueError, match=says):
        call(views, views.figures, traced()[2])


@pytest.mark.parametrize("call, says", [
    (lambda: __import__("minigpt.fast", fromlist=["optimize"]).optimize(model(), verbose="no"),
     "verbose must be True or False, got 'no'"),
    (lambda: decoders.diverse_beam_search(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, vocab_size=50257, n_positions=1024)),
                                          torch.zeros(64, 1, dtype=torch.long), num_beams=16, num_beam_groups=4,
                                          diversity_penalty=1.0, max_new_tokens=1000, keep_logprobs=True),
     r"beam search over 1024 beams x 50257 tokens x 1000 steps needs .* GiB, more than this machine"),
])
def test_the_last_hostile_cases_are_refused_up_front(call, says):
    with pytest.raises(ValueError, match=says):
        call()
