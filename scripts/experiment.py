#!/usr/bin/env python
"""Swap a component, train, and see: the baseline and each variant trained on Shakespeare from
several seeds, compared on the same held-out plays, with error bars.

    python scripts/experiment.py --variant rope --variant rmsnorm --variant swiglu --variant gqa
    python scripts/experiment.py --variant rmsnorm,swiglu --seeds 5 --steps 600 --out runs/mine
    python scripts/experiment.py --out runs/mine ...     # the same command again: resumes, trains what is missing

The baseline is the shipped model's recipe (weights/shakespeare: 4 layers, 4 heads, 160 wide, its
tokenizer) shortened to --steps steps, a budget of minutes on two cores. A variant names the
components it swaps in, several joined by commas: learned, rope, alibi (positions); layernorm,
rmsnorm (norms); swiglu (MLP); gqa[:N] (N key/value heads, default half the heads), mqa (one),
qk-norm, window[:N] (sliding-window attention, default a quarter of the context). Every run of seed
s reads the same training windows in the same order; all are scored on the same held-out text.

The runs are Ray tasks (minigpt/training/workers.py): a local Ray of this machine's cores by
default, one thread a run, as many at once as there are cores; --address (or RAY_ADDRESS) joins a
cluster whose nodes see --out at the same path. --workers 1 trains them one after another in this
process; --workers N caps the runs in flight. Each run logs to TensorBoard in its own directory:
`tensorboard --logdir <out>` compares them, live.

    python scripts/experiment.py --variant rope --match flops       # each variant the baseline's FLOPs
    python scripts/experiment.py --variant rope --lrs 1e-3,2e-3,4e-3  # each variant at its best rate

It prints a table of held-out bits per byte (mean, standard deviation and range over the seeds),
the change from the baseline, parameters, training FLOPs per token and tokens/s, read back from the
TensorBoard logs; then each variant's difference from the baseline paired by seed, with its 95%
interval. It writes curves.png (each variant's held-out curve, its seeds as a band), results.md
and every run's result.json to --out. A run that fails is reported with its error and the others
go on. Interrupted, it keeps the runs it finished; run it again with the same --out to go on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from common import (SHIPPED, Parser, draw_bar, machine_line, pictures, positive_int, non_negative_int, run, save,
                    thread_count)
from minigpt import GPTConfig
from minigpt.files import write_text_atomically
from minigpt.training import TokenCorpus, TrainConfig
from minigpt.training.experiment import (InProcess, RayWorkers, Recipe, check_variants, failures, paired_differences,
                                         paired_table, run_experiment, run_name, summary, table)
from minigpt.training.logs import read_logs
from prepare import Progress as Tokenizing
from prepare import prepare_from
from weights.locate import home_expanded


def parser() -> Parser:
    parser = Parser(__doc__)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[,NAME...]",
                        help="a variant to compare with the baseline (repeat for several)")
    parser.add_argument("--seeds", type=positive_int, default=3, help="runs per variant, seeds 0, 1, ... (default 3)")
    parser.add_argument("--steps", type=positive_int, default=300, help="training steps per run (default 300)")
    parser.add_argument("--batch", type=positive_int, default=16, help="windows per step (default 16)")
    parser.add_argument("--block", type=positive_int, default=128, help="tokens per window, the context (default 128)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    parser.add_argument("--warmup", type=non_negative_int, default=40)
    parser.add_argument("--evals", type=positive_int, default=4, help="held-out evaluations per run (default 4)")
    parser.add_argument("--match", choices=("tokens", "flops"), default="tokens",
                        help="every variant trains on the same tokens (default), or for the baseline's training FLOPs")
    parser.add_argument("--lrs", type=learning_rates, default=(), metavar="LR,LR,...",
                        help="choose each variant's learning rate among these on a validation tenth of the training "
                             "plays (one run each, first seed), then train the grid at it")
    parser.add_argument("--out", help="the experiment's directory (default: a new runs/experiment-<time>); "
                                      "an earlier one's to resume it")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="1: the runs one after another in this process; N: at most N Ray tasks at once "
                             "(default: as many as the cluster's CPUs fit)")
    parser.add_argument("--address", default=None, help="a Ray cluster's address to run on (default: RAY_ADDRESS if "
                        "set, else a local Ray of this machine's cores)")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="torch threads per run (default: 1 on Ray, every core with --workers 1)")
    return parser


def learning_rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected learning rates joined by commas (1e-3,2e-3), got {text!r}") from None
    if not all(0 < rate <= 10 for rate in rates):
        raise argparse.ArgumentTypeError(f"each learning rate must be in (0, 10], got {text!r}")
    return rates


def main(args: argparse.Namespace) -> int:
    if args.workers == 1 and args.address:
        raise ValueError("--address runs the grid on a Ray cluster; --workers 1 runs it in this process: give one")
    if args.steps < args.evals:
        raise ValueError(f"--steps {args.steps} is too small for --evals {args.evals}: each evaluation comes after "
                         "a share of the steps")
    shipped = GPTConfig.from_json(SHIPPED / "config.json")
    model = GPTConfig(n_layer=shipped.n_layer, n_head=shipped.n_head, n_embd=shipped.n_embd,
                      vocab_size=shipped.vocab_size, n_positions=args.block)
    loop = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, min_lr=args.lr / 10, warmup=args.warmup,
                       eval_every=args.steps // args.evals, save_every=max(1, args.steps // args.evals))
    recipe = Recipe(model=model, train=loop, seeds=tuple(range(args.seeds)), match=args.match, lrs=args.lrs)
    configs = check_variants(recipe, args.variant)  # every name checked before anything is prepared or trained
    out = home_expanded(Path(args.out), "--out") if args.out else Path("runs") / time.strftime("experiment-%Y%m%d-%H%M%S")
    corpus = shakespeare_corpus(out / "corpus")
    where = machine_line()  # the load before the runs, not the runs' own
    if args.workers == 1:
        workers = InProcess(args.threads)
        how = f"one run at a time in this process, {args.threads or torch.get_num_threads()} threads"
    else:
        workers = RayWorkers(args.address, threads=args.threads or 1, at_once=args.workers)
        target = workers.target
        how = (f"Ray tasks of {args.threads or 1} thread(s), {args.workers or 'as many as fit'} at once, on "
               f"{'a local Ray of this machine' if target == 'local' else target}")
    print(where)
    budget = "the baseline's training FLOPs" if args.match == "flops" else f"{args.steps} steps"
    print(f"{len(configs)} variants x {args.seeds} seeds, {budget} of {recipe.tokens_per_step():,} tokens each; held "
          f"out: {len(corpus.held_out):,} tokens of {corpus.info['sources'][0]}; {how}; writing to {out} "
          f"(tensorboard --logdir {out})", flush=True)
    started = time.perf_counter()
    steps = {name: recipe.loop(config, args.lr).steps for name, config in configs.items()}  # --match flops: each its own
    results = run_experiment(out, corpus, recipe, args.variant, workers=workers, report=Progress(steps),
                             landed=Landed(len(configs) * (args.seeds + len(args.lrs))))
    grid = f"the grid took {time.perf_counter() - started:,.0f} s ({how})"
    finished = [r for r in results if "error" not in r]
    logged = read_logs(out, [run_name(r["variant"], r["seed"]) for r in finished])  # the table is the logs'
    text = f"{table(summary(logged))}\n\n{paired_table(paired_differences(logged))}"
    lost = "".join(f"\nfailed: {line}" for line in failures(results))
    print(f"\n\n{text}\n{lost}\n{grid}")
    write_text_atomically(out / "results.md", f"{where}\n{grid}\n\n{text}\n{lost}")
    write_text_atomically(out / "results.json", json.dumps(results, indent=1) + "\n")
    views = pictures()
    if views is None:
        print(f"wrote {out}/results.md; for curves.png install the views extra: pip install -e '.[views]'")
    elif logged:
        print(f"wrote {out}/results.md and {save(views.figures.experiment_curves(logged), out / 'curves.png')}")
    return 1 if lost else 0


def shakespeare_corpus(directory: Path) -> TokenCorpus:
    """Shakespeare's plays tokenized with the shipped model's tokenizer, once per experiment directory."""
    if not (directory / "corpus.json").exists():
        arguments = argparse.Namespace(text=None, tokenizer=str(SHIPPED), vocab_size=None, learn_chars=0, held_out=0.05)
        prepare_from(arguments, directory, progress=Tokenizing())
        print(file=sys.stderr)
    return TokenCorpus.open(directory)


class Landed:
    """A line as each run finishes (in any order, on any worker): its score or its error."""

    def __init__(self, runs: int):
        self.runs, self.done = runs, 0

    def __call__(self, result: dict) -> None:
        self.done += 1
        what = f"{result['variant']} seed {result['seed']}"
        if "error" in result:
            print(f"[{self.done}/{self.runs}] {what} failed: {result['error']}", flush=True)
            return
        scored = ("validation" if result["scored_on"] == "validation" else "held-out")
        print(f"[{self.done}/{self.runs}] {what}, lr {result['lr']:g}: {scored} {result['bits_per_byte']:.4f} bits/byte, "
              f"{result['seconds']:.0f} s on {result['ran_on']}", flush=True)


class Progress:
    """The progress line of the run that last reported a step (runs in flight take turns on it):
    variant, seed, step, loss, tokens/s; the held-out loss as it comes."""

    def __init__(self, steps: dict[str, int]):
        self.steps = steps  # each variant's (under --match flops, its own)

    def __call__(self, variant: str, seed: int, record: dict) -> None:
        held = f", held-out {record['held_out']:.3f}" if "held_out" in record else ""
        draw_bar(f"{variant} seed {seed}: step", record["step"], self.steps[variant],
                 f"loss {record['loss']:.3f}{held} {record['tokens_per_s']:,.0f} tok/s")
        if record["step"] == self.steps[variant]:
            print(file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run(main, parser()))
