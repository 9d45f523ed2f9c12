#!/usr/bin/env python
"""Which heads matter: head importance (Michel, Levy & Neubig 2019), then their iterative pruning:
remove the least important tenth of the heads, recompute the importance, repeat, and watch the loss.

    python scripts/heads.py --text-file my_text.txt --rounds 5

Prints the importance table and the loss after each round; writes head_importance.png and
pruning_loss.png to --out-dir.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from common import (PICTURES_HINT, SAMPLE_TEXT, Parser, add_model_arguments, add_output_argument, draw_bar,
                    finite_float, load_model, output_dir, pictures, positive_int, prompt_ids, run, save, table)
from minigpt import GPT, Tokenizer, analysis

Batches = list[tuple[torch.Tensor, None]]


def parser() -> Parser:
    parser = Parser(__doc__)
    add_model_arguments(parser)
    parser.add_argument("--text-file", help="the text the loss is measured on (default: the opening of A Tale of Two Cities)")
    parser.add_argument("--fraction", type=finite_float, default=0.1, help="share of all heads removed per round")
    parser.add_argument("--rounds", type=positive_int, default=9)
    parser.add_argument("--block", type=positive_int, default=128, help="tokens per batch row (at most the context)")
    add_output_argument(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    if not 0 < args.fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], got {args.fraction}")
    model, _, what, tokenizer = load_model(args)
    print(what)
    batches = text_batches(args, model, tokenizer)
    config = model.config
    tokens = sum(int(analysis.predicted(ids).sum()) for ids, _ in batches)
    print(f"text: {tokens + len(batches)} tokens in {len(batches)} block(s) of up to {batches[0][0].shape[1]}\n")

    importance = analysis.head_importance(model, batches)
    print("head importance E|∂loss(x)/∂gate| over the blocks x, each layer normalised to unit length "
          "(Michel et al. 2019); higher matters more")
    print(table([[str(layer), *(f"{x:.2f}" for x in row)] for layer, row in enumerate(importance.tolist())],
                ["layer", *(f"h{head}" for head in range(config.n_head))]))

    per_round = max(1, round(args.fraction * config.n_layer * config.n_head))
    result = analysis.prune_by_importance(model, batches, fraction=args.fraction, rounds=args.rounds,
                                          on_round=lambda done, total: draw_bar(f"pruning {per_round} heads a round",
                                                                                done, total))
    print(file=sys.stderr)
    print(f"stopped {result.stopped}")
    curve = result.points

    total, base = config.n_layer * config.n_head, curve[0][1]
    print("\n" + table([[str(n), f"{100 * n / total:.0f}%", f"{loss:.4f}", f"{loss - base:+.4f}"] for n, loss in curve],
                       ["heads pruned", "share", "loss (nats/token)", "change"]))
    views = pictures()
    if views is None:
        print(f"\n{PICTURES_HINT}")
        return 0
    out = output_dir(args)
    heat = save(views.figures.head_heatmap(importance, "head importance (per-layer normalised)", "importance"),
                out / "head_importance.png")
    line = save(views.figures.pruning_curve(result, total), out / "pruning_loss.png")
    print(f"\nwrote {heat} and {line}")
    return 0


def text_batches(args: argparse.Namespace, model: GPT, tokenizer: Tokenizer) -> Batches:
    """The text as rows of --block tokens (the last may be shorter), each row its own batch."""
    if args.text_file is None:
        text, flag = SAMPLE_TEXT, "the sample text"
    else:
        try:
            text, flag = Path(args.text_file).read_text(encoding="utf-8"), "--text-file"
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--text-file {args.text_file}: {getattr(err, 'strerror', None) or err}") from None
    ids = prompt_ids(tokenizer, text, model, flag)[0]
    block = min(args.block, model.config.n_positions)
    rows = [ids[start : start + block] for start in range(0, len(ids), block)]
    rows = [row for row in rows if len(row) >= 2]  # a row of one token predicts nothing
    if not rows:
        raise ValueError(f"{flag} is a single token: the loss needs at least two")
    return [(row[None], None) for row in rows]


if __name__ == "__main__":
    sys.exit(run(main, parser()))
