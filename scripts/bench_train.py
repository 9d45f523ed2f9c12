#!/usr/bin/env python
"""Training speed: minigpt's GPT and transformers' GPT2LMHeadModel trained by the same loop
(`minigpt.training.train`), the same shape and data, taking turns; tokens per second, their
ratio, and the model FLOPs utilisation (MFU): the share of this CPU's peak that minigpt's step reaches.

    python scripts/bench_train.py                 # the shipped Shakespeare model's shape
    python scripts/bench_train.py --steps 10 --rounds 2

Each model computes its loss as its users would: transformers' from its logits, formed whole
(`LogitsLoss`, what GPT2LMHeadModel(labels=...) does), ours through `NextTokenLoss`, whose output
head never forms them whole. minigpt is timed twice: as it is (eager), and with the loop's
`compile=True` (torch.compile; its first steps, which compile, are not timed). transformers runs
eager, as its Trainer does by default.

The peak is measured, not taken from a datasheet: the best of a few large square matrix
products (torch.mm) in the same dtype, which is what the machine's BLAS reaches at best.
FLOPs per token follow the PaLM paper's count (appendix B): 6 x parameters + 12 x layers x
width x context for the attention scores, forward and backward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings

import torch
from torch import nn

from common import Parser, add_threads_argument, machine_line, positive_int, run, seconds
from minigpt import GPT, GPTConfig
from minigpt.training import LogitsLoss, NextTokenLoss, TokenWindows, TrainConfig, train


class Logits(nn.Module):
    """transformers' GPT2LMHeadModel behind the call our loop makes: ids -> logits."""

    def __init__(self, reference: nn.Module):
        super().__init__()
        self.reference = reference

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.reference(ids).logits

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def config(self):  # what the loop reads: vocab_size
        return self.reference.config


def parser() -> Parser:
    parser = Parser(__doc__)
    parser.add_argument("--n-layer", type=positive_int, default=4)
    parser.add_argument("--n-head", type=positive_int, default=4)
    parser.add_argument("--n-embd", type=positive_int, default=160)
    parser.add_argument("--vocab-size", type=positive_int, default=2048)
    parser.add_argument("--block", type=positive_int, default=256)
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--steps", type=positive_int, default=20, help="steps per turn (the first 3 of each are warm-up)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="turns each model takes")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled column (saves its start-up)")
    add_threads_argument(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore")
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=args.vocab_size,
                       n_positions=args.block)  # checked: --n-embd must be divisible by --n-head, say
    tokens = torch.randint(0, args.vocab_size, (200_000,), generator=torch.Generator().manual_seed(0))
    held_out = TokenWindows(tokens[:2 * args.block + 1], args.block, seed=0)
    parameters = config.parameter_count
    per_token = 6 * parameters + 12 * config.n_layer * config.n_embd * args.block  # FLOPs, forward and backward
    print(machine_line())
    print(f"{config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, vocabulary {config.vocab_size}, "
          f"context {args.block}; batch {args.batch}; {torch.get_num_threads()} threads; median tokens/s over "
          f"{args.rounds} turns of {args.steps} steps\n")
    print(f"{'dtype':<10}{'transformers':>14}{'minigpt':>10}{'ratio':>7}{'compiled':>10}{'ratio':>7}"
          f"{'GFLOP/s':>10}{'peak GFLOP/s':>14}{'MFU':>6}")
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        ours = GPT(config)
        theirs = GPT2LMHeadModel(GPT2Config(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                                            vocab_size=config.vocab_size, n_positions=args.block,
                                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        runs = {"transformers": (Logits(theirs), LogitsLoss, False), "ours": (ours, NextTokenLoss, False)}
        if not args.no_compile:
            runs["compiled"] = (ours, NextTokenLoss, True)
        speeds: dict[str, list[float]] = {name: [] for name in runs}
        for turn in range(args.rounds):
            for name, (model, objective, compiled) in runs.items():
                loop = TrainConfig(steps=args.steps, batch=args.batch, warmup=1, eval_every=10**9, save_every=10**9,
                                   dtype=dtype, compile=compiled)
                records: list[dict] = []
                train(model, TokenWindows(tokens, args.block, seed=turn), held_out, loop, report=records.append,
                      objective=objective)
                speeds[name] += [r["tokens_per_s"] for r in records[3:]]  # the first steps warm up (and compile)
            print(f"... {dtype}: turn {turn + 1} of {args.rounds} done", file=sys.stderr, flush=True)
        theirs_speed, ours_speed = statistics.median(speeds["transformers"]), statistics.median(speeds["ours"])
        best = statistics.median(speeds.get("compiled", speeds["ours"]))  # the MFU is of minigpt at its fastest
        compiled = f"{best:>10,.0f}{best / theirs_speed:>6.2f}x" if "compiled" in runs else f"{'-':>10}{'-':>7}"
        achieved = best * per_token / 1e9
        peak = gemm_peak(torch.float32 if dtype == "float32" else torch.bfloat16) / 1e9
        print(f"{dtype:<10}{theirs_speed:>14,.0f}{ours_speed:>10,.0f}{ours_speed / theirs_speed:>6.2f}x{compiled}"
              f"{achieved:>10.1f}{peak:>14.1f}{achieved / peak:>6.0%}")
    print(f"\n{parameters:,} parameters; {per_token:,} FLOPs per token (forward and backward); MFU: minigpt's "
          f"GFLOP/s (compiled, if timed) over the peak, the best {torch.float32} or {torch.bfloat16} matrix product measured here")
    return 0


def gemm_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` (size x size) @ (size x size) products in `dtype`."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up
    best = min(seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best


if __name__ == "__main__":
    sys.exit(run(main, parser()))
