"""The command-line scripts run end to end on a small checkpoint with GPT-2's vocabulary."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigpt import GPT, GPTConfig, Tokenizer
from minigpt.training import Document, TokenWindows, TrainConfig, make_optimizer, prepare
from minigpt.training.state import save_state
from weights import save_gpt2

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50257, n_positions=128))
    return save_gpt2(model, tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 40)
    return path


@pytest.fixture(scope="module")
def small_vocabulary(tmp_path_factory):
    """A checkpoint whose vocabulary (101 tokens) lacks GPT-2's <|endoftext|> (50256), though its
    config names it as EOS."""
    torch.manual_seed(0)
    directory = save_gpt2(GPT(GPTConfig.preset("tiny")), tmp_path_factory.mktemp("tiny"))
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"eos_token_id": 50256}))
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory, text_file):
    """Run directories train.py --resume must refuse: a corrupt state, one saved by a model of another
    shape, one that lacks keys, and one whose corpus is gone; each otherwise like RUN's run."""
    root = tmp_path_factory.mktemp("runs")
    text = text_file.read_text()
    tokenizer = Tokenizer.train(text[: int(len(text) * 0.95)], 300)
    config = TrainConfig(steps=5, batch=2)
    other = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=300, n_positions=32))
    states = {
        "corrupt": lambda path: path.write_bytes(b"\x80\x02 not a state"),
        "foreign": lambda path: save_state(path, other, make_optimizer(other, config), TokenWindows(
            torch.arange(100), 32, 0), 2, [], config),
        "incomplete": lambda path: torch.save({"model": {}, "step": 2, "config": dataclasses.asdict(config)}, path),
        "no-corpus": lambda path: path.write_bytes(b""),
    }
    for name, write in states.items():
        (root / name).mkdir()
        if name != "no-corpus":
            prepare([Document(None, [text])], tokenizer, root / name / "training-corpus", total_bytes=len(text),
                    held_out=0.05)
        write(root / name / "training-state.pt")
    return root


def launch(script: str, *args: str | bytes, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HUB_CACHE": "/nonexistent"} | (env or {}))


def run(script: str, *args: str, env: dict | None = None) -> str:
    done = launch(script, *args, env=env)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.mark.parametrize("fast", [[], ["--fast", "float32"]])
def test_verify_passes(checkpoint, fast):
    out = run("verify.py", "--weights", str(checkpoint), "--new-tokens", "5", *fast)
    assert ("(fast, float32)" in out) == bool(fast)
    assert "PASS" in out and "top-1 agreement over" in out and "greedy, 5 new tokens: identical" in out


@pytest.mark.parametrize("decoder, packed", [("greedy", []), ("sample", []), ("beam", []), ("diverse", []),
                                             ("contrastive", []), ("greedy", ["--fast", "float32"]),
                                             ("beam", ["--fast", "bfloat16"]), ("sample", ["--fast", "int8"])])
def test_generate_streams_text(checkpoint, decoder, packed):
    out = run("generate.py", "--weights", str(checkpoint), "--prompt", "Hello there", "--decoder", decoder, *packed,
              "--max-new-tokens", "6", "--num-return-sequences", "2" if decoder == "beam" else "1", "--choices")
    assert out.startswith("Hello there") and "alternatives (probability)" in out


def test_generate_speculative_writes_greedys_text_with_the_shipped_draft():
    greedy = run("generate.py", "--prompt", "ROMEO:", "--max-new-tokens", "24")
    done = launch("generate.py", "--prompt", "ROMEO:", "--max-new-tokens", "24", "--decoder", "speculative",
                  "--draft-tokens", "3", "--choices")
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert out.startswith(greedy.rstrip("\n")) and "alternatives (probability)" in out
    assert "the model accepted" in done.stderr.decode()


def test_compare_prints_every_decoder(checkpoint):
    out = run("compare.py", "--weights", str(checkpoint), "--prompt", "Hello there", "--max-new-tokens", "6")
    for name in ("greedy", "beam search", "diverse beam search", "contrastive search", "top-k sampling",
                 "nucleus sampling", "min-p sampling", "typical sampling"):
        assert f"== {name}" in out
    assert "distinct 1/2/3-grams" in out


def test_bench_prints_ratios():
    """Also the run of the README's bench command (test_readme.ELSEWHERE), with these options."""
    from test_readme import COMMANDS
    options = COMMANDS[".venv/bin/python scripts/bench.py --repeats 3"].split()[2:]
    assert options == ["--preset", "tiny", "--repeats", "1", "--new-tokens", "4", "--prefill-tokens", "16", "--no-compile"]
    out = run("bench.py", *options)
    assert sum(case in out for case in ("greedy, batch 1", "greedy, batch 8", "beam search, 4 beams", "sampling, batch 1",
                                        "prefill, 16 tokens", "contrastive", "diverse beam")) == 7 and "KV cache" in out
    assert "contrastive (a .6, k 4) *" in out and "against transformers 4.55.4" in out
    assert "fast float32" in out and "fast int8" in out and "CT2 int8" in out and "ORT int8" in out
    assert "MB per token" in out and "share" in out  # what bounds batch 1
    agreement = out[out.index("Agreement with float32"):]
    assert all(name in agreement for name in ("fast bfloat16", "CT2 int8", "ORT int8", "the model in the box"))


W = "--weights"
RUN = ["--text-file", "{text}", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block", "32", "--vocab-size",
       "300", "--steps", "5", "--batch", "2"]  # the run the states in `runs` claim to be
BAD_ARGUMENTS = [  # script, arguments ({ckpt} and {tiny} are checkpoints), what the error line must say
    ("generate.py", [W, "/nonexistent", "--prompt", "hi"], "--weights: weights path /nonexistent does not exist"),
    ("generate.py", [W, "", "--prompt", "hi"], "--weights: weights must be a checkpoint directory"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--device", "banana"], "--device: device 'banana' is not a device"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--dtype", "banana"], "argument --dtype: invalid choice: 'banana'"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--max-new-tokens", "-1"], "argument --max-new-tokens: must be an integer >= 1"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--max-new-tokens", "2.5"], "argument --max-new-tokens: invalid integer value"),
    ("generate.py", [W, "{ckpt}", "--prompt", ""], "--prompt is empty: give some text"),
    ("generate.py", [W, "{ckpt}", "--prompt", b"caf\xe9"], "--prompt is not valid UTF-8 text"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--decoder", "beam", "--num-beams", "0"], "--num-beams must be in [1, 50257]"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--decoder", "sample", "--top-p", "0"], "--top-p must be in (0, 1]"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--decoder", "sample", "--temperature", "nan"],
     "argument --temperature: must be a finite number"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--decoder", "sample", "--temperature", "1e-45"],
     "--temperature must be 0 (greedy) or in [1e-06, 1e+06]"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--decoder", "speculative", "--draft", "{ckpt}", "--temperature", "-1"],
     "--temperature must be in [0, 1e+06], got -1"),  # greedy's text, but a value sampling refuses is not ignored
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--decoder", "beam", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--repetition-penalty", "1e-45"], "--repetition-penalty must be in"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--eos-token-id", "99999"], "--eos-token-id must be in [0, 50256], got 99999"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--eos-token-id", "end"], "--eos-token-id must be a token id or 'none'"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--fast", "float16"], "argument --fast: invalid choice: 'float16'"),
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
    ("attention.py", [W, "{ckpt}", "--text", ""], "--text is empty"),
    ("attention.py", [W, "{ckpt}", "--text", "word " * 200], "--text is 201 tokens, more than the model's context of 128"),
    ("attention.py", [W, "{ckpt}", "--fast", "float32", "--out-dir", "/proc/forbidden"], "--out-dir /proc/forbidden"),
    ("heads.py", [W, "{ckpt}", "--text-file", "/nonexistent.txt"], "--text-file /nonexistent.txt: No such file"),
    ("heads.py", [W, "{ckpt}", "--fraction", "0"], "--fraction must be in (0, 1], got 0.0"),
    ("heads.py", [W, "{ckpt}", "--rounds", "0"], "argument --rounds: must be an integer >= 1"),
    ("heads.py", [W, "{ckpt}", "--fast", "int8"], "int8 weights are for inference"),
    ("train.py", ["--out", "{ckpt}/config.json"], "--out "),
    ("train.py", ["--text-file", "/nonexistent.txt"], "--text: /nonexistent.txt: no such file or directory"),
    ("train.py", ["--data", "{empty}"], "is not a prepared corpus (scripts/prepare.py writes one): it has no corpus.json"),
    ("train.py", ["--data", "{runs}/corrupt/training-corpus", "--text", "{text}"], "--data is a corpus already tokenized"),
    ("prepare.py", ["--out", "{ckpt}"], "is not empty (config.json, model.safetensors); give a new directory"),
    ("prepare.py", ["--out", "{empty}/new", "--text", "/nonexistent"], "--text: /nonexistent: no such file or directory"),
    ("prepare.py", ["--out", "{empty}/new", "--text", "{binary}"], "is not UTF-8 text (invalid start byte"),
    ("prepare.py", ["--out", "{empty}/new", "--held-out", "0.9"], "--held-out must be in (0, 0.5], got 0.9"),
    ("prepare.py", ["--out", "{empty}/new", "--tokenizer", "/nonexistent"], "--tokenizer: "),
    ("prepare.py", ["--vocab-size", "3"], "the following arguments are required: --out"),
    ("prepare.py", ["--out", "/proc/forbidden/corpus"], "--out /proc/forbidden/corpus: "),
    ("train.py", ["--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
    ("train.py", ["--device", "banana"], "--device: device 'banana' is not a device name"),
    ("train.py", ["--n-embd", "10", "--n-head", "3", "--text-file", "{text}"], "--n-embd (10) must be divisible by --n-head (3)"),
    ("train.py", ["--vocab-size", "100", "--text-file", "{text}"], "--vocab-size must be in [257, inf), got 100"),
    ("train.py", ["--vocab-size", "5000", "--text-file", "{text}"], "only enough distinct pairs for a vocabulary of"),
    ("train.py", ["--resume", "--out", "{empty}", "--text-file", "{text}"], "--resume: "),
    ("train.py", ["--steps", "0"], "argument --steps: must be an integer >= 1"),
    ("train.py", ["--lr", "1e30", "--text-file", "{text}"], "--lr must be in (0, 10], got 1e+30"),
    ("train.py", ["--clip", "-1", "--text-file", "{text}"], "--clip must be in (0, inf), got -1"),
    ("train.py", ["--weight-decay", "-1", "--text-file", "{text}"], "--weight-decay must be in [0, 1), got -1"),
    ("train.py", ["--resume", "--out", "{runs}/corrupt", *RUN], "it is not a training state this loop wrote"),
    ("train.py", ["--resume", "--out", "{runs}/foreign", *RUN], "it was saved by a model of another shape"),
    ("train.py", ["--resume", "--out", "{runs}/incomplete", *RUN], "the state is incomplete, it lacks optimizer"),
    ("train.py", ["--resume", "--out", "{runs}/no-corpus", *RUN], "holds no run to continue (no training-corpus)"),
    ("train.py", ["--resume", *RUN], "--resume needs --out"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--num-return-sequences", "3"],
     "--num-return-sequences 3: greedy writes one continuation per prompt"),
    ("bench_train.py", ["--n-embd", "10", "--n-head", "3"], "--n-embd (10) must be divisible by --n-head (3)"),
    ("generate.py", ["--prompt", "hi", "--decoder", "speculative", "--draft", "{ckpt}"],
     "its tokenizer is not the model's"),
    ("generate.py", [W, "{ckpt}", "--prompt", "hi", "--decoder", "speculative"], "--decoder speculative needs --draft"),
    ("generate.py", ["--prompt", "hi", "--decoder", "speculative", "--draft-tokens", "0"],
     "--draft-tokens must be in [1, 32], got 0"),
    # experiment.py: each refused before a corpus is prepared or a step trained (--out would be created first)
    ("experiment.py", ["--variant", "rotary", "--out", "{empty}/x"], "unknown variant 'rotary' in 'rotary'; known: learned"),
    ("experiment.py", ["--variant", "gqa:3", "--out", "{empty}/x"], "n_kv_head (3) must divide n_head (4)"),
    ("experiment.py", ["--variant", "alibi,learned", "--out", "{empty}/x"], "alibi and learned both set the model's position"),
    ("experiment.py", ["--threads", "100000", "--out", "{empty}/x"], "--threads: must be at most"),
    ("experiment.py", ["--variant", "window:0", "--out", "{empty}/x"], "window:0: after the colon comes a positive"),
    ("experiment.py", ["--steps", "3", "--out", "{empty}/x"], "--steps 3 is too small for --evals 4"),
    ("experiment.py", ["--variant", "rope", "--variant", "rope", "--out", "{empty}/x"], "a variant is named twice"),
    ("experiment.py", ["--lrs", "1e-3,x", "--out", "{empty}/x"], "expected learning rates joined by commas"),
    ("experiment.py", ["--lrs", "1e-3,0", "--out", "{empty}/x"], "each learning rate must be in (0, 10]"),
    ("experiment.py", ["--lrs", "1e-3,1e-3", "--out", "{empty}/x"], "--lrs must be distinct learning rates"),
    ("experiment.py", ["--workers", "0", "--out", "{empty}/x"], "--workers: must be an integer >= 1, got 0"),
    ("experiment.py", ["--match", "steps", "--out", "{empty}/x"], "--match: invalid choice: 'steps'"),
    ("experiment.py", ["--workers", "1", "--address", "10.0.0.1:6379", "--out", "{empty}/x"],
     "--address runs the grid on a Ray cluster; --workers 1 runs it in this process"),
]
if not torch.cuda.is_available():
    BAD_ARGUMENTS.append(("generate.py", [W, "{ckpt}", "--prompt", "hi", "--device", "cuda"], "CUDA is not available"))


@pytest.mark.parametrize("script, arguments, expected", BAD_ARGUMENTS)
def test_a_user_error_is_one_error_line_and_exit_status_2(checkpoint, small_vocabulary, text_file, runs, tmp_path,
                                                         script, arguments, expected):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"plain text, then \xff\xfe, which UTF-8 never writes")
    places = dict(ckpt=checkpoint, tiny=small_vocabulary, text=text_file, empty=tmp_path, runs=runs, binary=binary)
    filled = [a.format(**places) if isinstance(a, str) else a for a in arguments]
    done = launch(script, *filled)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], err
    assert err.splitlines()[-1] == errors[0]  # nothing after it
    assert not (tmp_path / "x").exists()  # experiment.py's --out: nothing written


@pytest.fixture(scope="module")
def four_heads(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=16, vocab_size=50257, n_positions=64))
    return save_gpt2(model, tmp_path_factory.mktemp("four-heads"))


def test_attention_prints_the_entropy_table_and_writes_two_pictures_and_a_view(four_heads, tmp_path):
    out = run("attention.py", "--weights", str(four_heads), "--text", "The cat sat on the mat.", "--out-dir", str(tmp_path))
    assert "attention entropy (nats)" in out and "layer    h0    h1    h2    h3" in out
    for name in ("attention_maps.png", "attention_entropy.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / name).stat().st_size > 5000
    assert (tmp_path / "attention.html").read_text().startswith("<!DOCTYPE html>")


def test_heads_prunes_round_by_round_and_writes_two_pictures(four_heads, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    out = run("heads.py", "--weights", str(four_heads), "--text-file", str(text), "--rounds", "3", "--block", "40",
              "--out-dir", str(tmp_path))
    assert "head importance" in out
    rows = [cells for cells in map(str.split, out.splitlines()) if len(cells) == 4 and cells[1].endswith("%")]
    assert [row[0] for row in rows] == ["0", "1", "2", "3"]  # 10% of 8 heads: one a round
    for name in ("head_importance.png", "pruning_loss.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / name).stat().st_size > 5000


def test_without_matplotlib_the_scripts_print_tables_and_say_how_to_get_pictures(four_heads, tmp_path):
    blocker = tmp_path / "no-matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    env = {"PYTHONPATH": str(blocker.parent)}
    out = run("attention.py", "--weights", str(four_heads), "--out-dir", str(tmp_path), env=env)
    assert "attention entropy (nats)" in out and 'pip install -e ".[views]"' in out
    assert not list(tmp_path.glob("*.png"))


def test_train_writes_a_checkpoint_generate_reads_and_resumes(text_file, tmp_path):
    out = tmp_path / "model"
    common = ["--text-file", str(text_file), "--out", str(out), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
              "--block", "32", "--vocab-size", "300", "--batch", "4", "--eval-every", "5", "--save-every", "5"]
    printed = run("train.py", *common, "--steps", "10")
    assert "held out:" in printed and "bits/byte" in printed and "unigram baseline" in printed
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "training.json"} <= {p.name for p in out.iterdir()}
    assert run("generate.py", "--weights", str(out), "--prompt", "To be", "--max-new-tokens", "5").startswith("To be")
    done = launch("train.py", *common, "--steps", "12", "--resume")  # other settings than the saved state
    assert done.returncode == 2 and b"it was trained with other settings (steps)" in done.stderr
