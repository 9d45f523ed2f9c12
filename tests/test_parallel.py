"""Data parallelism under torchrun (gloo, on the CPU): two processes train exactly as one process
accumulating two micro-batches, and a two-process run resumes as if never stopped.

Tolerance: 1e-5 where two processes are compared with one. DistributedDataParallel averages the two
ranks' gradients where one process sums two micro-batches' halves: the same numbers added in
another order, a few 1e-9 apart after these steps (seen); bit for bit where the split is the same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minigpt.training import Ranks

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_worker.py"
TEXT = "To be, or not to be, that is the question. Whether tis nobler in the mind to suffer.\n" * 300
SMALL = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block", "32", "--vocab-size", "300", "--steps", "6",
         "--eval-every", "3", "--batch", "4"]


def torchrun(*arguments: str | Path, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone`: one machine, a free port, so that tests running at once do not meet."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return subprocess.run([*command, *map(str, arguments)], capture_output=True, text=True, timeout=300, cwd=ROOT)


def alone(*arguments: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, arguments)], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_two_processes_train_as_one_accumulating_two_micro_batches(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    two = torchrun(ROOT / "scripts" / "train.py", "--out", tmp_path / "two", "--text", text, *SMALL)
    assert two.returncode == 0, two.stderr
    assert "2 processes" in two.stdout and two.stdout.count("wrote ") == 1  # rank 0 alone prints and writes
    one = alone(ROOT / "scripts" / "train.py", "--out", tmp_path / "one", "--text", text, *SMALL, "--accumulate", "2")
    assert one.returncode == 0, one.stderr
    ours, theirs = load_file(tmp_path / "two" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], rtol=0, atol=1e-5), name
    histories = [json.loads((tmp_path / run / "training.json").read_text())["history"] for run in ("two", "one")]
    assert [h["step"] for h in histories[0]] == [3, 6]
    for a, b in zip(*histories):  # the held-out loss: each rank evaluates half, the sums are added
        assert a["train"] == pytest.approx(b["train"], abs=1e-5) and a["held_out"] == pytest.approx(b["held_out"], abs=1e-5)


def parameters(directory: Path) -> dict[str, torch.Tensor]:
    return torch.load(directory / "parameters.pt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Two processes, eight steps, dropout on; and the same without dropout."""
    runs = {}
    for dropout in ("0.1", "0"):
        out = tmp_path_factory.mktemp(f"whole-{dropout}")
        done = torchrun(WORKER, out, "--dropout", dropout)
        assert done.returncode == 0, done.stderr
        runs[dropout] = parameters(out)
    return runs


def test_a_resumed_two_process_run_equals_an_uninterrupted_one(tmp_path, uninterrupted):
    stopped = torchrun(WORKER, tmp_path, "--stop-at", "5")  # saved at step 3, stopped after step 5
    assert stopped.returncode == 0 and not (tmp_path / "parameters.pt").exists(), stopped.stderr
    resumed = torchrun(WORKER, tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    whole = uninterrupted["0.1"]
    for name, value in parameters(tmp_path).items():
        assert torch.equal(value, whole[name]), name  # bit for bit: dropout's masks included


def test_a_two_process_run_resumes_in_one_process_keeping_the_global_batch(tmp_path, uninterrupted):
    assert torchrun(WORKER, tmp_path, "--stop-at", "5", "--dropout", "0").returncode == 0
    resumed = alone(WORKER, tmp_path, "--resume", "--dropout", "0", "--accumulate", "2")
    assert resumed.returncode == 0, resumed.stderr
    whole = uninterrupted["0"]
    for name, value in parameters(tmp_path).items():
        assert torch.allclose(value, whole[name], rtol=0, atol=1e-5), name


def test_what_cannot_continue_exactly_is_refused(tmp_path):
    assert torchrun(WORKER, tmp_path, "--stop-at", "5").returncode == 0  # dropout on
    other_split = alone(WORKER, tmp_path, "--resume", "--accumulate", "2")
    assert other_split.returncode == 2 and "dropout" in other_split.stderr
    other_batch = alone(WORKER, tmp_path, "--resume")  # one process, batch 2: half the global batch
    assert other_batch.returncode == 2 and "global batch" in other_batch.stderr


def test_several_machines_need_a_prepared_corpus_every_machine_reads(monkeypatch):
    """Rank 0 would tokenize the text on its own disk, where the other machines' ranks cannot read it."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import train as script

    args = script.parser().parse_args(["--out", "anywhere"])
    two_machines = Ranks(rank=0, count=4, local_rank=0, local_count=2)
    with pytest.raises(ValueError, match="on several machines, give --data"):
        script.train_run(args, two_machines, "cpu")
