"""transformers 4.55.4, the last release with contrastive search and group beam search inside
generate(), as a second reference beside the pinned 5.x.

It is installed once per checkout into .reference/transformers-4.55.4 (pip --target, with the two
dependencies whose 5.x versions it cannot use); torch, numpy and the rest come from the test
environment. `generate_455` installs it on first use, runs many cases in one subprocess and
returns their outputs.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / ".reference" / "transformers-4.55.4"
PACKAGES = ["transformers==4.55.4", "huggingface-hub==0.36.0", "tokenizers==0.21.4"]


def ensure_installed() -> None:
    """Install 4.55.4 into TARGET unless a complete install is there. Raises with pip's message.
    Called by whatever needs it (the tests against 4.55.4, the benchmark); a file lock makes the
    test workers that ask at once install it once."""
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    complete = TARGET / ".complete"
    with open(TARGET.parent / ".install-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if complete.is_file() and complete.read_text() == " ".join(PACKAGES):
            return
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade", "--target",
                               str(TARGET), *PACKAGES], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"could not install the 4.55.4 reference into {TARGET}:\n{done.stderr[-2000:]}")
        complete.write_text(" ".join(PACKAGES))


def environment() -> dict:
    """The environment of a process that imports transformers 4.55.4 first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TARGET), str(Path(__file__).parent)])}


RUNNER = Path(__file__).parent / "reference_455.py"


def generate_455(checkpoint: Path, cases: list[dict]) -> list[dict]:
    """Each case's generate() output under transformers 4.55.4: {"sequences", "sequences_scores"}."""
    ensure_installed()
    done = subprocess.run([sys.executable, str(RUNNER)], input=json.dumps(
        {"checkpoint": str(checkpoint), "cases": cases}), capture_output=True, text=True, env=environment(), timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"transformers 4.55.4 failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)
