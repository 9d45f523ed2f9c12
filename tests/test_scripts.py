"""The command-line scripts run end to end on a small checkpoint with GPT-2's vocabulary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigpt import GPT, GPTConfig
from weights import save_gpt2

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50257, n_positions=128))
    return save_gpt2(model, tmp_path_factory.mktemp("small"))


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("packed", [[], ["--pack"]])
def test_verify_passes(checkpoint, packed):
    out = run("verify.py", "--weights", str(checkpoint), "--new-tokens", "5", *packed)
    assert ("(packed for CPU)" in out) == bool(packed)
    assert "PASS" in out and "top-1 agreement over" in out and "greedy, 5 new tokens: identical" in out


@pytest.mark.parametrize("decoder, packed", [("greedy", []), ("sample", []), ("beam", []), ("greedy", ["--pack"])])
def test_generate_streams_text(checkpoint, decoder, packed):
    out = run("generate.py", "--weights", str(checkpoint), "--prompt", "Hello there", "--decoder", decoder, *packed,
              "--max-new-tokens", "6", "--num-return-sequences", "2" if decoder == "beam" else "1", "--choices")
    assert out.startswith("Hello there") and "alternatives (probability)" in out


def test_compare_prints_every_decoder(checkpoint):
    out = run("compare.py", "--weights", str(checkpoint), "--prompt", "Hello there", "--max-new-tokens", "6")
    for name in ("greedy", "beam search", "top-k sampling", "nucleus sampling"):
        assert f"== {name}" in out
    assert "distinct 1/2/3-grams" in out


def test_bench_prints_ratios():
    out = run("bench.py", "--preset", "tiny", "--new-tokens", "4", "--repeats", "1", "--prefill-tokens", "16")
    assert out.count("x\n") == 5 and "KV cache" in out
    assert "minigpt  ratio" in out and "minigpt, packed  ratio" in out
