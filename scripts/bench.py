#!/usr/bin/env python
"""Tokens per second of minigpt's decoders, of transformers' generate() and of CTranslate2, measured
in the same run on the same random weights, with each one's ratio to transformers (> 1: faster).

    python scripts/bench.py                  # GPT-2 124M shape, CPU (or CUDA if present)
    python scripts/bench.py --device cuda --dtype float16

Columns: minigpt as loaded; minigpt.fast.optimize with float32, bfloat16 and int8 weights; on the
CPU also the float32 fast model with its step compiled (compile_step), and CTranslate2 float32 and
int8 (the same checkpoint through its transformers converter; `pip install -e ".[bench]"`). Each
case runs once to warm up, then `--repeats` times, the engines taking turns; the median counts.
Then what bounds batch 1: the bytes of weights a step reads, against the measured read bandwidth.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

import decoders
from common import (DTYPES, Parser, add_threads_argument, machine_line, option, positive_int, random_gpt2_checkpoint, run,
                    seconds)
from minigpt import Tokenizer
from minigpt.checks import check_device
from minigpt.config import PRESETS
from minigpt.fast import WEIGHT_FORMATS, compile_step, optimize
from weights import load_gpt2


def timed(runs: list, device: str, repeats: int) -> list[float]:
    """Median seconds of each run. The runs take turns (a, b, c, a, b, c, ...) so that a change
    in the machine's load during the measurement falls on all of them alike."""

    def once(job) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        measured = job()  # a job in another process reports its own time (no pipe overhead counted)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return measured if isinstance(measured, float) else time.perf_counter() - start

    for job in runs:  # warm-up: allocator, kernels, caches
        job()
    times = [[once(job) for job in runs] for _ in range(repeats)]
    return [statistics.median(column) for column in zip(*times)]


class Worker:
    """An engine in a process of its own, timing itself: a case per line to its stdin (JSON), the
    seconds it took back on its stdout. Used for transformers 4.55.4 (which needs its own import
    path) and for CTranslate2 (whose threads slow any engine beside them in one process)."""

    def __init__(self, command: list[str], env: dict | None = None):
        self.process = subprocess.Popen([sys.executable, *command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)

    def job(self, case: dict):
        """A run for `timed`, which takes the seconds the worker reports (no pipe overhead counted)."""
        line = json.dumps(case) + "\n"

        def once() -> float:
            self.process.stdin.write(line)
            self.process.stdin.flush()
            answer = self.process.stdout.readline()
            if not answer:
                raise RuntimeError(f"the benchmark worker {self.process.args[1]} stopped")
            return float(answer)
        return once


def legacy_worker(directory: Path, threads: int) -> Worker:
    """transformers 4.55.4's generate() (tests/reference_455.py --serve)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from legacy import RUNNER, ensure_installed, environment

    ensure_installed()
    return Worker([str(RUNNER), "--serve", str(directory), str(threads)], env=environment())


def legacy_case(ids: torch.Tensor, new_tokens: int, **kwargs) -> dict:
    """Exactly new_tokens tokens (random weights must not stop early)."""
    kwargs |= {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "pad_token_id": 0}
    return {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "kwargs": kwargs}


def write_ct2_tokenizer(directory: Path, vocab_size: int) -> None:
    """The tokenizer files CTranslate2's converter reads beside the weights, once, before its workers
    start. It wants exactly the model's vocabulary size: GPT-2's, cut to it for the small shapes,
    its last entry the end of text (ids stay ids; the text does not matter here)."""
    gpt2 = Tokenizer.gpt2().decoder
    symbols = [gpt2[i] for i in range(vocab_size - 1)] + ["<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")


def ct2_worker(directory: Path, quantization: str, threads: int) -> Worker:
    """CTranslate2's Generator on the same checkpoint (scripts/ct2_worker.py)."""
    return Worker([str(Path(__file__).with_name("ct2_worker.py")), str(directory), quantization, str(threads)])


def ct2_case(ids: torch.Tensor, new_tokens: int, beam_size: int = 1) -> dict:
    return {"input_ids": ids.tolist(), "new_tokens": new_tokens, "beam_size": beam_size}


def read_bandwidth() -> float:
    """Bytes per second this machine reads from memory: the best of 4 sums over 1 GiB."""
    x = torch.ones(2**28)
    best = min(seconds(x.sum) for _ in range(4))
    return x.numel() * x.element_size() / best


def matrix_entries(model) -> int:
    """How many weights a decoding step reads: the entries of every block's matrices and of the
    head (the embedding lookup reads a few rows, LayerNorms and biases are small)."""
    config = model.config
    per_layer = config.n_embd * 3 * config.n_embd + config.n_embd * config.n_embd + 2 * config.n_embd * config.mlp_width
    return config.n_layer * per_layer + config.vocab_size * config.n_embd


def parser() -> Parser:
    parser = Parser(__doc__)
    parser.add_argument("--preset", choices=PRESETS, default="gpt2", help="model shape")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="of transformers and minigpt as loaded")
    parser.add_argument("--new-tokens", type=positive_int, default=32)
    parser.add_argument("--prompt-tokens", type=positive_int, default=32)
    parser.add_argument("--prefill-tokens", type=positive_int, default=512)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled-step column (it compiles "
                        "for a minute per batch size)")
    add_threads_argument(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    option(check_device, "--device", args.device)
    context = PRESETS[args.preset].n_positions
    if args.prompt_tokens + args.new_tokens > context or args.prefill_tokens > context:
        raise ValueError(f"--prompt-tokens + --new-tokens and --prefill-tokens must fit the {args.preset} context "
                         f"of {context} positions")
    warnings.filterwarnings("ignore")
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()

    directory = random_gpt2_checkpoint(args.preset)
    dtype, cpu, threads = DTYPES[args.dtype], args.device == "cpu", torch.get_num_threads()
    ours = load_gpt2(directory, device=args.device, dtype=dtype)
    models = {"minigpt": ours} | {f"fast {w}": optimize(load_gpt2(directory, device=args.device), weights=w)
                                  for w in WEIGHT_FORMATS}
    if cpu and not args.no_compile:
        models["fast float32, compiled"] = compile_step(optimize(load_gpt2(directory), weights="float32"))
    engines = {}
    if cpu and importlib.util.find_spec("ctranslate2") is None:
        print('note: CTranslate2 columns left out; pip install -e ".[bench]" to add them')
    elif cpu:
        write_ct2_tokenizer(directory, ours.config.vocab_size)
        engines = {f"CT2 {q}": ct2_worker(directory, q, threads) for q in ("float32", "int8")}
    theirs = GPT2LMHeadModel.from_pretrained(directory, dtype=dtype).to(args.device).eval()
    theirs.generation_config.eos_token_id = None  # random weights: never stop early, in any engine
    theirs.generation_config.pad_token_id = 0
    config, n = ours.config, args.new_tokens
    g = torch.Generator().manual_seed(0)

    def prompt(batch: int) -> torch.Tensor:
        return torch.randint(0, config.vocab_size, (batch, args.prompt_tokens), generator=g).to(args.device)

    def hf(ids, **kw):
        return lambda: theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, **kw)

    one, eight = prompt(1), prompt(8)
    legacy = legacy_worker(directory, threads) if cpu and dtype == torch.float32 else None
    long = torch.randint(0, config.vocab_size, (1, args.prefill_tokens), generator=g).to(args.device)
    seeded = torch.Generator(device=args.device)
    cases = [  # name, generated tokens per run, how we run it on a model, transformers, CTranslate2 (or None)
        ("greedy, batch 1", n, lambda m: decoders.greedy(m, one, max_new_tokens=n), hf(one, do_sample=False),
         lambda e: e.job(ct2_case(one, n))),
        ("greedy, batch 8", 8 * n, lambda m: decoders.greedy(m, eight, max_new_tokens=n), hf(eight, do_sample=False),
         lambda e: e.job(ct2_case(eight, n))),
        ("beam search, 4 beams", n, lambda m: decoders.beam_search(m, one, num_beams=4, max_new_tokens=n),
         hf(one, do_sample=False, num_beams=4), lambda e: e.job(ct2_case(one, n, beam_size=4))),
        ("sampling, batch 1", n, lambda m: decoders.sample(m, one, max_new_tokens=n, generator=seeded.manual_seed(0)),
         hf(one, do_sample=True, top_k=0), None),
        (f"prefill, {args.prefill_tokens} tokens", args.prefill_tokens, lambda m: m(long),
         lambda: theirs(long, use_cache=False), None),
    ]
    if legacy is not None:  # transformers 5.x no longer has these two: the reference is 4.55.4
        cases += [
            ("contrastive (a .6, k 4) *", n,
             lambda m: decoders.contrastive_search(m, one, penalty_alpha=0.6, top_k=4, max_new_tokens=n),
             legacy.job(legacy_case(one, n, penalty_alpha=0.6, top_k=4)), None),
            ("diverse beam (4, 2 groups) *", n,
             lambda m: decoders.diverse_beam_search(m, one, num_beams=4, num_beam_groups=2, diversity_penalty=1.0,
                                                    max_new_tokens=n),
             legacy.job(legacy_case(one, n, num_beams=4, num_beam_groups=2, diversity_penalty=1.0, do_sample=False)),
             None),
        ]

    print(machine_line())
    print(f"{args.preset} shape ({config.n_layer} layers, {config.n_embd} wide), random weights; {args.device}, {args.dtype}, "
          f"{threads} threads; prompt {args.prompt_tokens} tokens, {n} new tokens; median of {args.repeats}; "
          "tokens per second (ratio to transformers)")
    columns = ["transformers", *models, *engines]
    width = max(16, *(len(name) + 2 for name in columns))
    print(f"{'case':<30}" + "".join(f"{name:>{width}}" for name in columns))
    measured = {}
    for name, tokens, ours_on, reference, engine_on in cases:
        runs = [reference] + [functools.partial(ours_on, m) for m in models.values()]
        runs += [engine_on(e) for e in engines.values()] if engine_on else []
        with torch.no_grad():
            t_ref, *t_rest = timed(runs, args.device, args.repeats)
        measured[name] = dict(zip(columns[1:], t_rest))
        cells = [f"{tokens / t_ref:.1f}"] + [f"{tokens / t:.1f} ({t_ref / t:.2f})" for t in t_rest]
        print(f"{name:<30}" + "".join(f"{cell:>{width}}" for cell in cells + ["-"] * (len(columns) - len(cells))))
    if legacy is not None:
        print("* against transformers 4.55.4 (in a process of its own), the last release with these decoders")

    if cpu:
        bandwidth = read_bandwidth()
        print(f"\nWhat bounds batch 1: a step reads every weight matrix once; memory reads {bandwidth / 1e9:.1f} GB/s "
              "(sum over 1 GiB)")
        greedy_one = measured["greedy, batch 1"]
        for weights, size in (("float32", 4), ("bfloat16", 2), ("int8", 1)):
            nbytes = matrix_entries(ours) * size
            bound = bandwidth / nbytes
            print(f"  {weights:<9} {nbytes / 1e6:7.1f} MB per token: at most {bound:6.1f} tokens/s; fast {weights} "
                  f"decodes {n / greedy_one[f'fast {weights}']:6.1f} ({n / greedy_one[f'fast {weights}'] / bound:.0%} "
                  "of the bound)")
    cache = ours.new_cache(1, args.prompt_tokens + n)
    per_token = cache.nbytes / cache.max_length
    print(f"\nKV cache: {cache.nbytes / 2**20:.1f} MiB for 1 row x {cache.max_length} positions "
          f"({per_token / 1024:.1f} KiB per position: {config.n_layer} layers x keys and values x {config.n_embd} x "
          f"{ours.dtype.itemsize} bytes); preallocated once, written in place")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, parser()))
