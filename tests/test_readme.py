"""Every code block and command in README.md runs, so a newcomer never meets an example that fails.

The Python blocks run as written, one after another in one interpreter (as a reader pasting them
would), from a directory that is not the repository's: their paths must work from anywhere. A
hub name ("gpt2") finds a small random GPT-2 in a Hugging Face cache the test builds.

Each shell command is listed in COMMANDS with how the test runs it; a command in the README that is
not listed (or a listed one that left the README) fails the first test. What changes, and why:
- `python3 -m venv .venv && .venv/bin/pip install ... && X`: the suite already runs inside that
  environment, so the test runs X; `.venv/bin/python` is this interpreter.
- the test command itself: collected (`--collect-only`), not run again from inside the suite;
- training: `--steps 2` instead of thousands, into a copy of the shipped model instead of it; the
  experiment: the baseline and one variant, 2 steps per run, one seed; heads: one round of pruning;
- torchrun: `python -m torch.distributed.run` (the same program), and the 8-GPU run as two CPU
  processes on one tiny layer, its corpus prepared from the README's text, not OpenWebText;
- benchmarks: the tiny preset and one short turn, not ten minutes of measurement.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import fake_hub_cache
from minigpt import GPT, GPTConfig
from weights import SHAKESPEARE, save_gpt2

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
SHELL_LINES = [line for block in re.findall(r"```sh\n(.*?)```", README, re.S) for line in block.splitlines() if line]

MAIN = 'python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e ".[test]" && .venv/bin/python scripts/verify.py'
TESTS = ('python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e ".[test,bench,experiments]" && '
         ".venv/bin/python -m pytest -n 2")
SHIPPED_TRAINING = (
    '.venv/bin/pip install -q -e ".[train]" && .venv/bin/python scripts/train.py --out weights/shakespeare --overwrite '
    "--n-layer 4 --n-head 4 --n-embd 160 --block 256 --vocab-size 2048 --dropout 0.1 --dtype bfloat16 --steps 4000 "
    "--lr 2e-3 --min-lr 2e-4 --warmup 200 --eval-every 500 --save-every 500")
DRAFT_TRAINING = (".venv/bin/python scripts/train.py --out weights/shakespeare-draft --overwrite --tokenizer "
                  "weights/shakespeare --n-layer 2 --n-head 2 --n-embd 128 --block 256 --dropout 0.1 --dtype bfloat16 "
                  "--steps 2000 --lr 2e-3 --min-lr 2e-4 --warmup 200 --eval-every 500 --save-every 500")
OWN_TRAINING = (".venv/bin/python scripts/train.py --text my_text.txt --n-layer 2 --n-head 2 --n-embd 64 --block 64 "
                "--vocab-size 512 --steps 300 --out my-model")
PREPARE = ".venv/bin/python scripts/prepare.py --text my_text.txt --out my-corpus --vocab-size 512"
TWO_PROCESSES = (".venv/bin/torchrun --standalone --nproc_per_node 2 scripts/train.py --data my-corpus --out my-model-2 "
                 "--n-layer 2 --n-head 2 --n-embd 64 --block 64 --steps 300")
PREPARE_OWT = ".venv/bin/python scripts/prepare.py --text openwebtext/ --tokenizer gpt2 --out data/owt"
EIGHT_GPUS = (".venv/bin/torchrun --standalone --nproc_per_node 8 scripts/train.py --data data/owt --out gpt2-owt "
              "--n-layer 12 --n-head 12 --n-embd 768 --block 1024 --batch 16 --accumulate 4 --dtype bfloat16 --compile "
              "--steps 17000 --lr 6e-4 --min-lr 6e-5 --warmup 700 --eval-every 1000 --save-every 1000")
TORCHRUN = ".venv/bin/python -m torch.distributed.run"  # torchrun, as this interpreter runs it
GENERATE = '.venv/bin/python scripts/generate.py --prompt "ROMEO:" --decoder {} --max-new-tokens 40 --top-p 0.9 --seed 1'
DECODERS = ["greedy", "beam", "sample", "contrastive"]
EXPERIMENT = ('.venv/bin/pip install -q -e ".[experiments]" && .venv/bin/python scripts/experiment.py --variant rope '
              "--variant rmsnorm --variant swiglu --variant gqa --variant rope,rmsnorm,swiglu,gqa --out runs/experiment")

CHECK = ".venv/bin/python -m minigpt.check my_attention.py:attend --kind attend"  # exits 1: the piece is wrong

# the README's command -> what the test runs (after the last `&&`; {copy} is a copy of the shipped model)
COMMANDS = {
    MAIN: ".venv/bin/python scripts/verify.py",
    TESTS: ".venv/bin/python -m pytest -n 2 --collect-only -q",
    SHIPPED_TRAINING: SHIPPED_TRAINING.split(" && ")[1].replace("--steps 4000", "--steps 2")
    .replace("--out weights/shakespeare", "--out {copy}").replace("--eval-every 500", "--eval-every 2"),
    '.venv/bin/python scripts/attention.py --text "The cat sat on the mat because it was tired."   # maps + entropy': None,
    # 1 round of pruning, not 9: each round is the same code, and 2 took 100 s of a loaded suite
    ".venv/bin/python scripts/heads.py --text-file my_text.txt    # importance, then prune 10% a round, loss each round":
        ".venv/bin/python scripts/heads.py --text-file my_text.txt --rounds 1",
    DRAFT_TRAINING: DRAFT_TRAINING.replace("--steps 2000", "--steps 2").replace("--eval-every 500", "--eval-every 2")
    .replace("--out weights/shakespeare-draft", "--out {copy}-draft").replace("--tokenizer weights/shakespeare",
                                                                              "--tokenizer {copy}"),
    OWN_TRAINING: OWN_TRAINING.replace("--steps 300", "--steps 2"),
    PREPARE: None,
    TWO_PROCESSES: TWO_PROCESSES.replace(".venv/bin/torchrun", TORCHRUN).replace("--steps 300", "--steps 2"),
    # the corpus: the README for OpenWebText; the model: 8 GPUs' run, two processes on the CPU, one tiny layer
    PREPARE_OWT: PREPARE_OWT.replace("openwebtext/", "my_text.txt"),
    EIGHT_GPUS: EIGHT_GPUS.replace(".venv/bin/torchrun", TORCHRUN).replace("--nproc_per_node 8", "--nproc_per_node 2")
    .replace("--n-layer 12 --n-head 12 --n-embd 768 --block 1024 --batch 16", "--n-layer 1 --n-head 2 --n-embd 16 --block 32 "
             "--batch 2").replace("--steps 17000", "--steps 2").replace("--warmup 700 --eval-every 1000 --save-every 1000",
                                                                        "--warmup 1 --eval-every 1 --save-every 1"),
    '.venv/bin/python scripts/generate.py --weights my-model --prompt "The" --max-new-tokens 20': None,
    **{GENERATE.format(decoder): None for decoder in DECODERS},
    # the baseline and rotary, each trained for 2 steps from one seed, as Ray tasks (the default): every run
    # is the same code, and the six runs' held-out evaluations (124k tokens each) took 132 s of a loaded suite
    EXPERIMENT: EXPERIMENT.split(" && ")[1].replace(" --variant rmsnorm --variant swiglu --variant gqa "
                                                    "--variant rope,rmsnorm,swiglu,gqa", "") + " --steps 2 --evals 1 --seeds 1",
    ".venv/bin/python scripts/bench.py --repeats 3": ".venv/bin/python scripts/bench.py --preset tiny --repeats 1 "
    "--new-tokens 4 --prefill-tokens 16 --no-compile",
    ".venv/bin/python scripts/bench_train.py": ".venv/bin/python scripts/bench_train.py --steps 4 --rounds 1 --batch 2 "
    "--no-compile",
    CHECK: None,
}
# commands whose run is another test's, which also checks what they print: running them here too
# would only run them twice
ELSEWHERE = {CHECK: "test_the_check_report_the_readme_shows_is_what_the_command_prints (below)",
             ".venv/bin/python scripts/bench.py --repeats 3": "tests/test_scripts.py::test_bench_prints_ratios, with "
             "the options given here"}
NEEDS = {'.venv/bin/python scripts/generate.py --weights my-model --prompt "The" --max-new-tokens 20':
         [OWN_TRAINING], TWO_PROCESSES: [PREPARE], EIGHT_GPUS: [PREPARE_OWT]}  # a command that reads what an earlier one wrote runs after it, in the same directory


def test_every_readme_command_is_run_by_this_test():
    assert sorted(SHELL_LINES) == sorted(COMMANDS)


@pytest.fixture
def workdir(tmp_path):
    """A directory that is not the repository, with the text file the README's commands name."""
    # 30 kB of English, enough for a 512-token vocabulary (the README's opening: the rest is mostly tables)
    (tmp_path / "my_text.txt").write_text(README[:30_000], encoding="utf-8")
    return tmp_path


def run(command: str, cwd: Path, **places) -> str:
    """One shell command of the README, run by this interpreter from `cwd`; returns what it printed."""
    words = shlex.split(command.split(" && ")[-1].format(**places), comments=True)
    assert words[0] == ".venv/bin/python"
    words = [sys.executable] + [str(ROOT / w) if w.startswith("scripts/") else w for w in words[1:]]
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cwd / "no-cache")}
    done = subprocess.run(words, cwd=ROOT if "pytest" in words else cwd, capture_output=True, text=True, timeout=900,
                          env=env)
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("command", [command for command in COMMANDS if command not in ELSEWHERE])
def test_readme_command_runs(command, workdir):
    copy = shutil.copytree(SHAKESPEARE, workdir / "copy")
    for earlier in NEEDS.get(command, []):
        run(COMMANDS[earlier] or earlier, workdir, copy=copy)
    printed = run(COMMANDS[command] or command, workdir, copy=copy)
    if command == MAIN:
        assert "PASS" in printed and "The model in the box" in printed and "ROMEO:" in printed


def test_the_check_report_the_readme_shows_is_what_the_command_prints(workdir):
    """The learner's file is the README's block that defines `attend`; the command exits 1 (a
    property fails) and prints the pasted report, all but the seconds it took."""
    section = README.split("### Check your own code")[1]
    (workdir / "my_attention.py").write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    words = [sys.executable] + shlex.split(CHECK)[1:]
    done = subprocess.run(words, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    pasted = re.search(r"```text\n(minigpt.check: .*?)```", section, re.S).group(1)

    def timeless(text: str) -> str:
        return re.sub(r"\(\d+\.\d s\)", "(_ s)", text).strip()
    assert timeless(done.stdout) == timeless(pasted)


def test_the_texts_the_readme_shows_are_what_generate_writes(workdir):
    header = "| " + " | ".join(f"`--decoder {d}`" for d in DECODERS) + " |\n| --- | --- | --- | --- |\n"
    row = README.split(header)[1].splitlines()[0]
    cells = [cell.strip().replace("<br>", "\n") for cell in row.strip("|").split(" | ")]
    for decoder, shown in zip(DECODERS, cells, strict=True):
        assert run(GENERATE.format(decoder), workdir).strip() == shown


def test_the_python_blocks_run_in_order_from_any_directory(tmp_path):
    torch.manual_seed(0)
    small = save_gpt2(GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, vocab_size=50257, n_positions=64)), tmp_path / "gpt2")
    cache = tmp_path / "cache"
    fake_hub_cache(cache, small, "gpt2")
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n\n".join(PYTHON_BLOCKS), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(PYTHON_BLOCKS) >= 4


def test_the_training_figures_the_readme_quotes_are_the_shipped_models_own():
    """They are copied from weights/shakespeare/training.json, which train.py wrote: checked here so
    they cannot drift from the model that ships."""
    report = json.loads((SHAKESPEARE / "training.json").read_text())
    line = re.search(r"Held-out loss: \*\*([\d.]+) nats per token, ([\d.]+) bits per byte\*\*; a unigram model of the "
                     r"training\s+tokens scores ([\d.]+) nats per token, ([\d.]+) bits per byte", README)
    quoted = [float(x) for x in line.groups()]
    assert quoted == [round(report[k], 3) for k in ("held_out_nats_per_token", "held_out_bits_per_byte",
                                                    "unigram_nats_per_token", "unigram_bits_per_byte")]
    curve = {h["step"]: round(h["held_out"], 2) for h in report["history"]}
    for value, step in re.findall(r"([\d.]+) at step (\d+)", README):
        assert curve[int(step)] == float(value)
