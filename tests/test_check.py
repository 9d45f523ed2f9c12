"""minigpt.check on learners' pieces (tests/learner_pieces.py): every wrong one is caught with the
idea it gets wrong named first, every right one passes every property, and the contracts where a
learner's code meets minigpt's say what they expect instead of failing inside torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import decoders
import learner_pieces as pieces
from decoders.processors import keep_top_k, keep_top_p
from minigpt import GPT, GPTConfig, explicit_attention, fused_attention, gpt2_block
from minigpt.block import TransformerBlock
from minigpt.check import CAUSES, check
from minigpt.checks import ContractError
from minigpt.components import make_attention, make_mlp, make_norm
from minigpt.tokenizer import Tokenizer
from test_protocols import NanoAttention, NanoBlock, NanoMLP

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind, piece, cause", pieces.BUGS, ids=[p.__name__ for _, p, _ in pieces.BUGS])
def test_each_learner_bug_is_caught_with_its_cause_named_first(kind, piece, cause):
    report = check(piece, kind)
    assert not report.passed
    assert report.causes[0] == cause, str(report)
    assert f"diagnosis: {CAUSES[cause].says}" in str(report)


def notebook_hand_block():
    """The block the course notebook writes by hand (notebooks/3-by-hand.ipynb), run from its cell."""
    cells = json.loads((ROOT / "notebooks/3-by-hand.ipynb").read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "class HandBlock" in "".join(c["source"]))
    namespace = {"torch": torch, "nn": nn, "math": math}
    exec(source.split("\nhand =")[0], namespace)  # the class alone, not the lines that load and run it
    return namespace["HandBlock"]


RIGHT = pieces.RIGHT + [
    ("attend", explicit_attention), ("attend", fused_attention),
    ("attention", make_attention), ("attention", NanoAttention),
    ("block", gpt2_block), ("block", NanoBlock), ("block", "notebook"),
    ("mlp", make_mlp), ("mlp", NanoMLP), ("norm", make_norm),
    ("top_p", keep_top_p), ("top_k", keep_top_k),
    ("decoder", lambda model, ids, n: decoders.greedy(model, ids, max_new_tokens=n)),
    ("tokenizer", Tokenizer.gpt2()),
]


@pytest.mark.parametrize("kind, piece", RIGHT, ids=[f"{k}-{getattr(p, '__name__', type(p).__name__)}" for k, p in RIGHT])
def test_right_pieces_pass_every_property(kind, piece):
    piece = notebook_hand_block() if piece == "notebook" else piece
    report = check(piece, kind)
    assert report.passed, str(report)
    assert all(f.skipped is None for f in report.findings if kind != "attend" or piece is not fused_attention)


def test_a_failure_shows_the_smallest_example_hypothesis_found():
    report = check(pieces.kernel_no_mask, "attend")
    causal = next(f for f in report.findings if f.name == "a query never sees a later key")
    assert causal.failure == ("the output at query 0 (key position 0) changed when key 1 changed "
                              "(t=2 queries over s=2 keys, d=1)")


def test_the_courses_wide_head_attention_meets_a_contract_error_not_a_torch_error():
    config = GPTConfig(n_layer=2, n_head=4, n_embd=32, vocab_size=50, n_positions=16)
    model = GPT(config, make_block=_wide_block).eval()
    ids = torch.randint(0, 50, (2, 5))
    assert model(ids).shape == (2, 5, 50)  # a plain forward runs: no cache is involved
    with pytest.raises(ContractError) as error:
        decoders.greedy(model, ids, max_new_tokens=3)
    message = str(error.value)
    assert "kv(k, v) takes this call's keys and values shaped (b h t d) = (2, 4, 5, 8)" in message
    assert "got k (2, 4, 5, 32)" in message and "README 'Swapping a component'" in message
    assert isinstance(error.value, ValueError)


def _wide_block(config):
    block = pieces.Block(config)
    block.attn = pieces.WideHeadSelfAttention(config)
    return block


class TupleBlock(nn.Module):
    """Returns (x, attention) as transformers' blocks do."""

    def __init__(self, config):
        super().__init__()
        self.inner = pieces.Block(config)

    def forward(self, x, allowed, kv=None):
        return self.inner(x, allowed, kv), None


def test_a_block_that_returns_a_tuple_is_told_what_to_return():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=20, n_positions=8), make_block=TupleBlock)
    with pytest.raises(ContractError, match=r"block 0 must return the residual stream's shape \(b t e\) = "
                                            r"\(1, 3, 8\), as it came in; got tuple"):
        model(torch.tensor([[1, 2, 3]]))


class HeadsAttention(nn.Module):
    """Returns each head's output (b t h d), without merging the heads and projecting them back."""

    def __init__(self, config):
        super().__init__()
        self.heads, self.c_attn = config.n_head, nn.Linear(config.n_embd, 3 * config.n_embd)

    def forward(self, x, allowed, kv=None):
        q, k, v = (part.unflatten(-1, (self.heads, -1)).transpose(1, 2) for part in self.c_attn(x).chunk(3, -1))
        return (torch.softmax((q @ k.transpose(-2, -1)).masked_fill(~allowed, float("-inf")), -1) @ v).transpose(1, 2)


def test_an_attention_in_our_block_that_returns_the_heads_unmerged_is_told_the_shape():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=20, n_positions=8),
                make_block=lambda c: TransformerBlock(nn.LayerNorm(8), HeadsAttention(c), nn.LayerNorm(8), make_mlp(c)))
    with pytest.raises(ContractError, match=r"attn must return the residual stream's shape \(b t e\) = \(1, 3, 8\), "
                                            r"as it came in; got \(1, 3, 2, 4\)"):
        model(torch.tensor([[1, 2, 3]]))


def test_check_reports_a_block_that_returns_a_tuple_as_a_shape_fault():
    report = check(TupleBlock, "block")
    assert report.causes[0] == "shape"
    assert "returned tuple, not a tensor (b t e)" in str(report)


def test_the_command_line_prints_the_report_and_exits_1_on_a_failure():
    run = subprocess.run([sys.executable, "-m", "minigpt.check", "tests/learner_pieces.py:LayerNormUnbiased",
                          "--kind", "norm"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "FAIL  with GPT-2's weights it computes GPT-2's norm" in run.stdout
    assert f"diagnosis: {CAUSES['norm-unbiased'].says}" in run.stdout


@pytest.mark.parametrize("arguments, says", [
    (["tests/learner_pieces.py:Nothing", "--kind", "norm"], "error: tests/learner_pieces.py has no 'Nothing'"),
    (["tests/nowhere.py:X", "--kind", "norm"], "error: no such file: tests/nowhere.py"),
    (["tests/learner_pieces.py", "--kind", "norm"], "error: name the piece as path/to/file.py:Name"),
])
def test_the_command_line_refuses_a_bad_target_in_one_line(arguments, says):
    run = subprocess.run([sys.executable, "-m", "minigpt.check", *arguments], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().startswith(says) and "Traceback" not in run.stderr


def test_check_refuses_an_unknown_kind_and_a_piece_that_is_not_callable():
    with pytest.raises(ValueError, match="kind must be one of 'attend'"):
        check(pieces.kernel, "attn")
    with pytest.raises(ValueError, match="must be callable"):
        check(3, "attend")


def test_check_leaves_the_learners_random_state_as_it_was():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check(pieces.MLP, "mlp")
    assert torch.equal(torch.rand(3), expected)


def test_every_cause_a_suite_can_name_is_written_down():
    from minigpt.check import variants
    from minigpt.check.beam import BEAM_PROBES
    from minigpt.check.decoding import DECODER_PROBES, ENTROPY_PROBES, SAMPLER_PROBES
    from minigpt.check.importance import IMPORTANCE_PROBES
    from minigpt.check.positions import POSITION_PROBES
    named = {*variants.ATTEND, *variants.ACTIVATIONS, *variants.TOP_P, *variants.TOP_K, *SAMPLER_PROBES,
             *DECODER_PROBES, *ENTROPY_PROBES, *BEAM_PROBES, *IMPORTANCE_PROBES, *POSITION_PROBES,
             *variants.module_probes("block", GPTConfig(n_head=2, n_embd=8))}
    assert named <= set(CAUSES)


def test_the_checks_references_are_minigpts_own():
    """The references the suites hold a learner's piece to are the library's computations, not copies
    that could drift: head importance as analysis.head_importance computes it, and the beam step as
    beam search's own steps 1 and 2."""
    from minigpt.analysis import head_importance
    from minigpt.check.beam import beam_reference, step_input
    from minigpt.check.importance import IMPORTANCE_CONFIG, gate_gradient
    from decoders.beam import Hypotheses, best_candidates, score_continuations

    torch.manual_seed(0)
    model = GPT(IMPORTANCE_CONFIG).eval()
    ids = torch.randint(0, IMPORTANCE_CONFIG.vocab_size, (3, 9))
    library = head_importance(model, ids, per_example=False, normalize=False)
    assert torch.allclose(gate_gradient(model, ids), library, rtol=1e-5, atol=1e-8)

    scores, logprobs = step_input(2, 3, 11, seed=0)
    running = Hypotheses.empty(torch.zeros(2, 1, dtype=torch.long), 3, 1, 0)
    running.score = scores
    expected = best_candidates(score_continuations(running, logprobs), 3, 11)
    for mine, theirs in zip(beam_reference(scores, logprobs), expected):
        assert torch.equal(mine, theirs)


def test_the_kind_read_off_a_pieces_names_is_never_a_wrong_guess():
    import sys
    sys.path.insert(0, str(ROOT / "notebooks" / "exercises"))
    import solutions

    from minigpt.check.kinds import infer_kind
    exercises = {"attend": solutions.attend, "block": solutions.MyBlock, "decoder": solutions.greedy,
                 "beam_step": solutions.beam_step, "top_p": solutions.top_p, "entropy": solutions.entropy,
                 "importance": solutions.importance, "positions": solutions.positions}
    assert {kind: infer_kind(piece) for kind, piece in exercises.items()} == {kind: kind for kind in exercises}
    everything = [(kind, piece) for kind, piece, _ in pieces.BUGS] + [(k, p) for k, p in RIGHT if p != "notebook"]
    assert [(kind, piece) for kind, piece in everything if infer_kind(piece) not in (kind, None)] == []
    assert sum(infer_kind(piece) == kind for kind, piece in everything) >= len(everything) - 8


def test_the_command_line_reads_the_kind_off_the_names_or_asks_for_it():
    run = subprocess.run([sys.executable, "-m", "minigpt.check", "notebooks/exercises/solutions.py:top_p"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("minigpt.check: top-p filter `top_p`"), run.stderr
    run = subprocess.run([sys.executable, "-m", "minigpt.check", "tests/learner_pieces.py:sinusoidal"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.startswith("error: cannot tell which kind of piece")
