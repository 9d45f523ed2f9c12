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

It prints a table of held-out bits per byte (mean, standard deviation and range over the seeds),
the change from the baseline, parameters and training tokens/s, and writes curves.png (each
variant's held-out curve, its seeds as a band), results.md and every run's result.json to --out.
Interrupted, it keeps the runs it finished; run it again with the same --out to go on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import (SHIPPED, Parser, add_threads_argument, draw_bar, machine_line, pictures, positive_int,
                    non_negative_int, run, save)
from minigpt import GPTConfig
from minigpt.files import write_text_atomically
from minigpt.training import TokenCorpus, TrainConfig
from minigpt.training.experiment import Recipe, check_variants, run_experiment, summary, table
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
    parser.add_argument("--out", help="the experiment's directory (default: a new runs/experiment-<time>); "
                                      "an earlier one's to resume it")
    add_threads_argument(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    if args.steps < args.evals:
        raise ValueError(f"--steps {args.steps} is too small for --evals {args.evals}: each evaluation comes after "
                         "a share of the steps")
    shipped = GPTConfig.from_json(SHIPPED / "config.json")
    model = GPTConfig(n_layer=shipped.n_layer, n_head=shipped.n_head, n_embd=shipped.n_embd,
                      vocab_size=shipped.vocab_size, n_positions=args.block)
    loop = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, min_lr=args.lr / 10, warmup=args.warmup,
                       eval_every=args.steps // args.evals, save_every=max(1, args.steps // args.evals))
    recipe = Recipe(model=model, train=loop, seeds=tuple(range(args.seeds)))
    configs = check_variants(recipe, args.variant)  # every name checked before anything is prepared or trained
    out = home_expanded(Path(args.out), "--out") if args.out else Path("runs") / time.strftime("experiment-%Y%m%d-%H%M%S")
    corpus = shakespeare_corpus(out / "corpus")
    where = machine_line()  # the load before the runs, not the runs' own
    print(where)
    print(f"{len(configs)} variants x {args.seeds} seeds, {args.steps} steps of {recipe.tokens_per_step():,} tokens each "
          f"({args.steps * recipe.tokens_per_step():,} tokens a run); held out: {len(corpus.held_out):,} tokens of "
          f"{corpus.info['sources'][0]}; writing to {out}", flush=True)
    results = run_experiment(out, corpus, recipe, args.variant, report=Progress(args.steps))
    rows = summary(results)
    text = table(rows)
    print(f"\n\n{text}")
    write_text_atomically(out / "results.md", f"{where}\n\n{text}\n")
    write_text_atomically(out / "results.json", json.dumps(results, indent=1) + "\n")
    views = pictures()
    if views is None:
        print(f"wrote {out}/results.md; for curves.png install the views extra: pip install -e '.[views]'")
    else:
        print(f"wrote {out}/results.md and {save(views.figures.experiment_curves(results), out / 'curves.png')}")
    return 0


def shakespeare_corpus(directory: Path) -> TokenCorpus:
    """Shakespeare's plays tokenized with the shipped model's tokenizer, once per experiment directory."""
    if not (directory / "corpus.json").exists():
        arguments = argparse.Namespace(text=None, tokenizer=str(SHIPPED), vocab_size=None, learn_chars=0, held_out=0.05)
        prepare_from(arguments, directory, progress=Tokenizing())
        print(file=sys.stderr)
    return TokenCorpus.open(directory)


class Progress:
    """One progress line per run: variant, seed, step, loss, tokens/s; the held-out loss as it comes."""

    def __init__(self, steps: int):
        self.steps = steps

    def __call__(self, variant: str, seed: int, record: dict) -> None:
        held = f", held-out {record['held_out']:.3f}" if "held_out" in record else ""
        draw_bar(f"{variant} seed {seed}: step", record["step"], self.steps,
                 f"loss {record['loss']:.3f}{held} {record['tokens_per_s']:,.0f} tok/s")
        if record["step"] == self.steps:
            print(file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run(main, parser()))
