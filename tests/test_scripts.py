"""The command-line scripts run end to end on a small checkpoint with GPT-2's vocabulary."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def small_vocabulary(tmp_path_factory):
    """A checkpoint whose vocabulary (101 tokens) lacks GPT-2's <|endoftext|> (50256), though its
    config names it as EOS."""
    torch.manual_seed(0)
    directory = save_gpt2(GPT(GPTConfig.preset("tiny")), tmp_path_factory.mktemp("tiny"))
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"eos_token_id": 50256}))
    return directory


def launch(script: str, *args: str | bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HUB_CACHE": "/nonexistent"})


def run(script: str, *args: str) -> str:
    done = launch(script, *args)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


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


W = "--weights"
BAD_ARGUMENTS = [  # script, arguments ({ckpt} and {tiny} are checkpoints), what the error line must say
    ("generate.py", [W, "/nonexistent", "--prompt", "hi"], "--weights: weights path /nonexistent does not exist"),
    ("generate.py", [W, "", "--prompt", "hi"], "--weights: weights must be a checkpoint directory"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--device", "banana"], "--device: device 'banana' is not a device"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--dtype", "banana"], "argument --dtype: invalid choice: 'banana'"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--max-new-tokens", "-1"], "argument --max-new-tokens: must be an integer >= 1"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--max-new-tokens", "2.5"], "argument --max-new-tokens: invalid integer value"),
    ("generate.py", [W, "{ckpt}", "--prompt", ""], "--prompt is empty"),
    ("generate.py", [W, "{ckpt}", "--prompt", b"caf\xe9"], "--prompt is not valid UTF-8 text"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--decoder", "beam", "--num-beams", "0"], "--num-beams must be in [1, 50257]"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--decoder", "sample", "--top-p", "0"], "--top-p must be in (0, 1]"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--decoder", "sample", "--temperature", "nan"],
     "argument --temperature: must be a finite number"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--decoder", "sample", "--temperature", "1e-45"],
     "--temperature must be 0 (greedy) or in [1e-06, 1e+06]"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--repetition-penalty", "1e-45"], "--repetition-penalty must be in"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--eos-token-id", "99999"], "--eos-token-id 99999 is outside"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--eos-token-id", "end"], "--eos-token-id must be a token id or 'none'"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--pack", "--dtype", "float16"], "--pack: pack_for_cpu needs a CPU float32"),
    ("generate.py", [W, "{tiny}", "--prompt", "!"], "--eos-token-id: the checkpoint's config names EOS 50256"),
    ("generate.py", [W, "{tiny}", "--prompt", "Hello"], "--prompt holds token id 15496, outside this checkpoint's vocabulary"),
    ("compare.py", [W, "{ckpt}", "--prompt", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens: must be an integer >= 1"),
    ("compare.py", [W, "{ckpt}", "--prompt", "hi", "--num-beams", "2", "--num-return-sequences", "1",
                    "--length-penalty", "50"], "--length-penalty must be in [-10, 10]"),
    ("compare.py", [W, "{ckpt}"], "the following arguments are required: --prompt"),
    ("verify.py", [W, "{ckpt}", "--new-tokens", "500"], "--new-tokens 500 after the 14-token prompt exceeds"),
    ("verify.py", [W, "{ckpt}", "--new-tokens", "0"], "argument --new-tokens: must be an integer >= 1"),
    ("bench.py", ["--repeats", "0"], "argument --repeats: must be an integer >= 1, got 0"),
    ("bench.py", ["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    ("bench.py", ["--preset", "tiny", "--new-tokens", "100"], "must fit the tiny context of 64 positions"),
    ("bench.py", ["--device", "banana"], "--device: device 'banana' is not a device name"),
]
if not torch.cuda.is_available():
    BAD_ARGUMENTS.append(("generate.py", [W, "{ckpt}", "--prompt", "hi", "--device", "cuda"], "CUDA is not available"))


@pytest.mark.parametrize("script, arguments, expected", BAD_ARGUMENTS)
def test_a_user_error_is_one_error_line_and_exit_status_2(checkpoint, small_vocabulary, script, arguments, expected):
    filled = [a.format(ckpt=checkpoint, tiny=small_vocabulary) if isinstance(a, str) else a for a in arguments]
    done = launch(script, *filled)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], err
    assert err.splitlines()[-1] == errors[0]  # nothing after it
