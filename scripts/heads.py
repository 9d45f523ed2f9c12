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

import plots
from common import (SAMPLE_TEXT, Parser, add_model_arguments, add_output_argument, finite_float, load_model, output_dir,
                    positive_int, progress, prompt_ids, run, table)
from minigpt import GPT, Tokenizer, analysis
from minigpt.analysis.pruning import kept_heads

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
    print("head importance |∂loss/∂gate|, each layer normalised to unit length (Michel et al. 2019); higher matters more")
    print(table([[str(layer), *(f"{x:.2f}" for x in row)] for layer, row in enumerate(importance.tolist())],
                ["layer", *(f"h{head}" for head in range(config.n_head))]))

    per_round = max(1, round(args.fraction * config.n_layer * config.n_head))
    curve = [(0, mean_loss(model, batches))]
    rounds = progress(list(range(args.rounds)), f"pruning {per_round} heads a round")
    for done in rounds:
        heads = least_important(model, analysis.head_importance(model, batches), per_round)
        if not heads:
            rounds.close()
            print(f"stopped after round {done} of {args.rounds}: every layer is down to its last head, which "
                  "pruning keeps (a layer with no head would pass nothing on)")
            break
        analysis.prune_heads(model, heads)
        curve.append((sum(len(h) for h in analysis.pruned_heads(model).values()), mean_loss(model, batches)))

    total, base = config.n_layer * config.n_head, curve[0][1]
    print("\n" + table([[str(n), f"{100 * n / total:.0f}%", f"{loss:.4f}", f"{loss - base:+.4f}"] for n, loss in curve],
                       ["heads pruned", "share", "loss (nats/token)", "change"]))
    plt = plots.pyplot()
    if plt is None:
        print(f"\n{plots.INSTALL_HINT}")
        return 0
    out = output_dir(args)
    heat = plots.heatmap(plt, importance, "head importance (per-layer normalised)", "importance", out / "head_importance.png")
    line = plots.curve(plt, [100 * n / total for n, _ in curve], [loss for _, loss in curve], "heads pruned (%)",
                       "loss (nats per token)", "loss as the least important heads are pruned", out / "pruning_loss.png")
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


@torch.no_grad()
def mean_loss(model: GPT, batches: Batches) -> float:
    """The loss over all batches, each weighted by how many tokens it predicts."""
    counts = [int(analysis.predicted(ids).sum()) for ids, _ in batches]
    return sum(float(analysis.lm_loss(model, ids)) * n for (ids, _), n in zip(batches, counts)) / sum(counts)


def least_important(model: GPT, importance: torch.Tensor, count: int) -> dict[int, list[int]]:
    """Up to `count` unpruned heads of least importance, never a layer's last head."""
    remaining = {layer: kept_heads(model, layer) for layer in range(model.config.n_layer)}
    order = sorted((importance[layer, head].item(), layer, head) for layer, heads in remaining.items() for head in heads)
    chosen: dict[int, list[int]] = {}
    for _, layer, head in order:
        if len(chosen.get(layer, [])) < len(remaining[layer]) - 1:
            chosen.setdefault(layer, []).append(head)
            if sum(len(h) for h in chosen.values()) == count:
                break
    return chosen


if __name__ == "__main__":
    sys.exit(run(main, parser()))
