#!/usr/bin/env python
"""Tokens per second of minigpt's decoders and of transformers' generate(), measured in the same
run on the same random weights, and their ratio (> 1: minigpt is faster).

    python scripts/bench.py                  # GPT-2 124M shape, CPU float32 (or CUDA if present)
    python scripts/bench.py --device cuda --dtype float16

On CPU in float32 minigpt runs twice: as loaded, and packed for CPU inference (pack_for_cpu:
the same model with its weights in oneDNN's layout). Each case runs once to warm up, then
`--repeats` times, the models taking turns; the median time counts.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

import decoders
from common import DTYPES, Parser, option, positive_int, random_gpt2_checkpoint, run
from minigpt import pack_for_cpu
from minigpt.checks import check_device
from minigpt.config import PRESETS
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


class Legacy:
    """transformers 4.55.4's generate(), in a worker process (tests/reference_455.py --serve)."""

    def __init__(self, directory, threads: int):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from legacy import RUNNER, ensure_installed, environment

        ensure_installed()
        self.worker = subprocess.Popen([sys.executable, str(RUNNER), "--serve", str(directory), str(threads)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment())

    def run(self, ids: torch.Tensor, new_tokens: int, **kwargs):
        """A run for `timed`: the worker generates exactly new_tokens tokens (random weights must not
        stop early) and answers with its own measured seconds."""
        kwargs |= {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "pad_token_id": 0}
        case = json.dumps({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "kwargs": kwargs})

        def once() -> float:
            self.worker.stdin.write(case + "\n")
            self.worker.stdin.flush()
            answer = self.worker.stdout.readline()
            if not answer:
                raise RuntimeError("the transformers 4.55.4 worker stopped")
            return float(answer)
        return once


def parser() -> Parser:
    parser = Parser(__doc__)
    parser.add_argument("--preset", choices=PRESETS, default="gpt2", help="model shape")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--new-tokens", type=positive_int, default=64)
    parser.add_argument("--prompt-tokens", type=positive_int, default=16)
    parser.add_argument("--prefill-tokens", type=positive_int, default=512)
    parser.add_argument("--repeats", type=positive_int, default=5)
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
    dtype = DTYPES[args.dtype]
    ours = load_gpt2(directory, device=args.device, dtype=dtype)
    packable = args.device == "cpu" and dtype == torch.float32
    models = {"minigpt": ours} | ({"minigpt, packed": pack_for_cpu(load_gpt2(directory))} if packable else {})
    theirs = GPT2LMHeadModel.from_pretrained(directory, dtype=dtype).to(args.device).eval()
    theirs.generation_config.eos_token_id = None  # random weights: never stop early, in either
    theirs.generation_config.pad_token_id = 0
    c, n = ours.config, args.new_tokens
    g = torch.Generator().manual_seed(0)

    def prompt(batch: int) -> torch.Tensor:
        return torch.randint(0, c.vocab_size, (batch, args.prompt_tokens), generator=g).to(args.device)

    def hf(ids, **kw):
        return lambda: theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, **kw)

    one, eight = prompt(1), prompt(8)
    legacy = Legacy(directory, torch.get_num_threads()) if args.device == "cpu" and dtype == torch.float32 else None
    long = torch.randint(0, c.vocab_size, (1, args.prefill_tokens), generator=g).to(args.device)
    seeded = torch.Generator(device=args.device)
    cases = [  # name, generated tokens per run, how we run it on a model, how transformers runs it
        ("greedy, batch 1", n, lambda m: decoders.greedy(m, one, max_new_tokens=n), hf(one, do_sample=False)),
        ("greedy, batch 8", 8 * n, lambda m: decoders.greedy(m, eight, max_new_tokens=n), hf(eight, do_sample=False)),
        ("beam search, 4 beams", n, lambda m: decoders.beam_search(m, one, num_beams=4, max_new_tokens=n),
         hf(one, do_sample=False, num_beams=4)),
        ("sampling, batch 1", n, lambda m: decoders.sample(m, one, max_new_tokens=n, generator=seeded.manual_seed(0)),
         hf(one, do_sample=True, top_k=0)),
        (f"prefill, {args.prefill_tokens} tokens", args.prefill_tokens, lambda m: m(long),
         lambda: theirs(long, use_cache=False)),
    ]
    if legacy is not None:  # transformers 5.x no longer has these two: the reference is 4.55.4
        cases += [
            ("contrastive (a .6, k 4) *", n,
             lambda m: decoders.contrastive_search(m, one, penalty_alpha=0.6, top_k=4, max_new_tokens=n),
             legacy.run(one, n, penalty_alpha=0.6, top_k=4)),
            ("diverse beam (4, 2 groups) *", n,
             lambda m: decoders.diverse_beam_search(m, one, num_beams=4, num_beam_groups=2, diversity_penalty=1.0,
                                                    max_new_tokens=n),
             legacy.run(one, n, num_beams=4, num_beam_groups=2, diversity_penalty=1.0, do_sample=False)),
        ]

    print(f"{args.preset} shape ({c.n_layer} layers, {c.n_embd} wide), random weights; {args.device}, {args.dtype}, "
          f"{torch.get_num_threads()} threads; prompt {args.prompt_tokens} tokens, {n} new tokens; "
          f"median of {args.repeats}; tokens per second, and ratio to transformers")
    print(f"{'case':<30}{'transformers':>14}" + "".join(f"{name:>18}{'ratio':>7}" for name in models))
    for name, tokens, ours_on, reference in cases:
        with torch.no_grad():
            t_ref, *t_ours = timed([reference] + [functools.partial(ours_on, m) for m in models.values()],
                                   args.device, args.repeats)
        print(f"{name:<30}{tokens / t_ref:>14.1f}" + "".join(f"{tokens / t:>18.1f}{t_ref / t:>6.2f}x" for t in t_ours))
    if legacy is not None:
        print("* against transformers 4.55.4 (in a process of its own), the last release with these decoders")
    cache = ours.new_cache(1, args.prompt_tokens + n)
    per_token = cache.nbytes / cache.max_length
    print(f"\nKV cache: {cache.nbytes / 2**20:.1f} MiB for 1 row x {cache.max_length} positions "
          f"({per_token / 1024:.1f} KiB per position: {c.n_layer} layers x keys and values x {c.n_embd} x "
          f"{ours.dtype.itemsize} bytes); preallocated once, written in place")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, parser()))
