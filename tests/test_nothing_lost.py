"""Nothing a user owns is overwritten by accident (issue: a failed first training run once left the
shipped model with another run's tokenizer). A failed run, an interrupted run and a refused run
leave a checkpoint byte for byte as it was; the shipped model is replaced only with --overwrite."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minigpt.files import write_atomically
from weights import SHAKESPEARE

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train.py"
SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block", "32", "--vocab-size", "300", "--batch", "2",
         "--threads", "1"]


def fingerprint(directory: Path) -> dict[str, str]:
    """Every file below `directory` and the sha256 of its bytes."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def train(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN), *arguments], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture
def shipped_copy(tmp_path):
    return Path(shutil.copytree(SHAKESPEARE, tmp_path / "shakespeare"))


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("Now is the winter of our discontent made glorious summer by this sun of York. " * 60)
    return path


def test_the_shipped_model_is_not_replaced_without_overwrite(text):
    before = fingerprint(SHAKESPEARE)
    for extra in ([], ["--resume"]):
        done = train("--out", str(SHAKESPEARE), "--text-file", str(text), *SMALL, "--steps", "1", *extra)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "is the model shipped with minigpt; pass --overwrite" in done.stderr.splitlines()[-1]
    assert fingerprint(SHAKESPEARE) == before


def test_a_directory_holding_a_checkpoint_is_refused_without_overwrite(shipped_copy, text):
    before = fingerprint(shipped_copy)
    done = train("--out", str(shipped_copy), "--text-file", str(text), *SMALL, "--steps", "1")
    assert done.returncode == 2 and "already holds a checkpoint or a run (config.json, model.safetensors" in done.stderr
    assert fingerprint(shipped_copy) == before


def test_a_failed_run_leaves_every_byte_of_the_checkpoint(shipped_copy, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too short for a window of 32 tokens.")
    before = fingerprint(shipped_copy)
    done = train("--out", str(shipped_copy), "--overwrite", "--text-file", str(short), *SMALL, "--steps", "5",
                 "--vocab-size", "258")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "too short for --block 32" in done.stderr.splitlines()[-1]
    assert fingerprint(shipped_copy) == before  # not one file added, removed or changed


def test_an_interrupted_run_leaves_the_checkpoint_whole_and_resumes(shipped_copy, text):
    before = fingerprint(shipped_copy)
    arguments = ["--out", str(shipped_copy), "--overwrite", "--text-file", str(text), *SMALL, "--steps", "300",
                 "--save-every", "2", "--eval-every", "500"]
    run = subprocess.Popen([sys.executable, str(TRAIN), *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    state = shipped_copy / "training-state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert "Traceback" not in err and f"continue with --resume --out {shipped_copy}" in err
    after = fingerprint(shipped_copy)
    assert {name: after[name] for name in before} == before  # the old checkpoint, byte for byte
    assert set(after) - set(before) == {"training-state.pt", *(f"training-corpus/{name}" for name in (
        "train.bin", "held_out.bin", "corpus.json", "vocab.json", "merges.txt"))}  # the run's own, none half-written

    done = train(*arguments, "--resume")
    assert done.returncode == 0, done.stderr
    assert "resumed at step" in done.stdout
    assert fingerprint(shipped_copy)["model.safetensors"] != before["model.safetensors"]  # now replaced, whole
    assert (shipped_copy / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_without_out_a_run_writes_a_fresh_directory_under_runs(tmp_path, text):
    done = train("--text-file", str(text), *SMALL, "--steps", "2", "--eval-every", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("train-") and (run / "model.safetensors").is_file()


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("old")

    def half_then_fail(partial: Path) -> None:
        partial.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["file.txt"]
