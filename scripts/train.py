#!/usr/bin/env python
"""Train a GPT-2 from scratch and save it in the public layout, with its tokenizer beside it.

    python scripts/train.py                      # Shakespeare, the shape of the shipped model
    python scripts/train.py --text-file my.txt --n-layer 2 --steps 500 --out my-model
    python scripts/train.py --resume             # continue an interrupted run exactly

The corpus defaults to Shakespeare's plays (the `train` extra installs them), three plays held out.
A byte-level BPE is learned from the training text (`Tokenizer.train`). The loop is
`minigpt.training.train`; this script reads the options, shows progress, and reports the held-out
loss in nats per token and bits per byte against a unigram baseline on the same text.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from common import Parser, draw_bar, finite_float, non_negative_int, option, positive_int, run
from minigpt import GPT, GPTConfig, Tokenizer
from minigpt.checks import check_device
from minigpt.training import TokenWindows, TrainConfig, shakespeare, split_by_play, train
from weights import save_gpt2

HELD_OUT = ["julius-caesar", "the-tempest", "twelfth-night"]  # a Roman play, a romance, a comedy


def parser() -> Parser:
    parser = Parser(__doc__)
    parser.add_argument("--out", default="weights/shakespeare", help="the checkpoint directory to write")
    parser.add_argument("--text-file", help="train on this UTF-8 text instead (its last 5%% held out)")
    parser.add_argument("--vocab-size", type=positive_int, default=2048)
    shape = parser.add_argument_group("model shape")
    shape.add_argument("--n-layer", type=positive_int, default=4)
    shape.add_argument("--n-head", type=positive_int, default=4)
    shape.add_argument("--n-embd", type=positive_int, default=160)
    shape.add_argument("--block", type=positive_int, default=128, help="tokens per training sequence (the context)")
    shape.add_argument("--dropout", type=finite_float, default=0.0)
    loop = parser.add_argument_group("training")
    defaults = TrainConfig()
    loop.add_argument("--steps", type=positive_int, default=defaults.steps)
    loop.add_argument("--batch", type=positive_int, default=defaults.batch)
    loop.add_argument("--accumulate", type=positive_int, default=defaults.accumulate)
    loop.add_argument("--lr", type=finite_float, default=defaults.lr)
    loop.add_argument("--min-lr", type=finite_float, default=defaults.min_lr)
    loop.add_argument("--warmup", type=non_negative_int, default=defaults.warmup)
    loop.add_argument("--weight-decay", type=finite_float, default=defaults.weight_decay)
    loop.add_argument("--clip", type=finite_float, default=defaults.clip)
    loop.add_argument("--eval-every", type=positive_int, default=defaults.eval_every)
    loop.add_argument("--save-every", type=positive_int, default=defaults.save_every)
    loop.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="bfloat16: autocast")
    loop.add_argument("--seed", type=non_negative_int, default=0)
    loop.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    loop.add_argument("--resume", action="store_true", help="continue from --out/training-state.pt")
    return parser


def main(args: argparse.Namespace) -> int:
    option(check_device, "--device", args.device)
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=args.vocab_size,
                       n_positions=args.block, dropout=args.dropout)  # checked (--dropout too) before any work is done
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {out}: {err.strerror or err}") from None
    torch.manual_seed(args.seed)
    train_text, held_out_text, where = corpus(args)
    tokenizer = tokenizer_for(train_text, args, out)
    eot = tokenizer.eot_id
    train_ids, held_ids = (torch.tensor(stream(tokenizer, text)) for text in (train_text, held_out_text))
    print(f"corpus: {where}; {len(train_ids):,} training and {len(held_ids):,} held-out tokens "
          f"(vocabulary {tokenizer.vocab_size})")

    model = GPT(config).to(args.device)
    loop = TrainConfig(steps=args.steps, batch=args.batch, accumulate=args.accumulate, lr=args.lr, min_lr=args.min_lr,
                       warmup=args.warmup, weight_decay=args.weight_decay, clip=args.clip, eval_every=args.eval_every,
                       save_every=args.save_every, dtype=args.dtype)
    print(f"model: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, context {config.n_positions}: "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; {loop.steps} steps of "
          f"{loop.batch * loop.accumulate * args.block:,} tokens; {torch.get_num_threads()} threads, {args.dtype}")
    history = train(model, TokenWindows(train_ids, args.block, seed=args.seed), TokenWindows(held_ids, args.block, seed=0),
                    loop, state_path=out / "training-state.pt", resume=args.resume, report=Progress(loop.steps))

    save_gpt2(model.cpu(), out, eos_token_id=eot, overwrite=True)
    held_out_nats = history[-1]["held_out"]
    unigram = unigram_loss(train_ids, held_ids, tokenizer.vocab_size)
    held_bytes = len(held_out_text.encode("utf-8"))
    report = {"held_out_nats_per_token": held_out_nats,
              "held_out_bits_per_byte": held_out_nats * len(held_ids) / held_bytes / math.log(2),
              "unigram_nats_per_token": unigram,
              "unigram_bits_per_byte": unigram * len(held_ids) / held_bytes / math.log(2),
              "held_out_tokens": len(held_ids), "held_out_bytes": held_bytes, "history": history}
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"\nheld out: {held_out_nats:.3f} nats/token, {report['held_out_bits_per_byte']:.3f} bits/byte; "
          f"unigram baseline {unigram:.3f} nats/token, {report['unigram_bits_per_byte']:.3f} bits/byte")
    print(f"wrote {out}: config.json, model.safetensors, vocab.json, merges.txt, training.json")
    return 0


def corpus(args: argparse.Namespace) -> tuple[str, str, str]:
    """(training text, held-out text, a description). Documents are joined by <|endoftext|>."""
    if args.text_file is None:
        train_plays, held_plays = split_by_play(shakespeare(), HELD_OUT)
        return ("<|endoftext|>".join(train_plays.values()), "<|endoftext|>".join(held_plays.values()),
                f"Shakespeare, {len(train_plays)} plays for training, held out: {', '.join(held_plays)}")
    try:
        text = Path(args.text_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--text-file {args.text_file}: {getattr(err, 'strerror', None) or err}") from None
    cut = int(len(text) * 0.95)
    return text[:cut], text[cut:], f"{args.text_file}, its last 5% held out"


def tokenizer_for(text: str, args: argparse.Namespace, out: Path) -> Tokenizer:
    """A resumed run keeps the tokenizer it was started with; a new run learns one and saves it."""
    if args.resume:
        if not (out / "vocab.json").is_file() or not (out / "merges.txt").is_file():
            raise ValueError(f"--resume: {out} holds no tokenizer (vocab.json, merges.txt): nothing to resume")
        tokenizer = Tokenizer.from_files(out / "vocab.json", out / "merges.txt")
        if tokenizer.vocab_size != args.vocab_size:
            raise ValueError(f"--resume: the run in {out} has a vocabulary of {tokenizer.vocab_size}, not --vocab-size {args.vocab_size}")
        return tokenizer
    tokenizer = Tokenizer.train(text, args.vocab_size)
    tokenizer.save(out)
    return tokenizer


def stream(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, allow_special=True)


def unigram_loss(train_ids: torch.Tensor, held_ids: torch.Tensor, vocab_size: int) -> float:
    """Held-out nats per token of the model that ignores context: each token's training frequency
    (add-one smoothed, so an unseen token is not infinitely surprising)."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1
    logp = (counts / counts.sum()).log()
    return float(-logp[held_ids].mean())


class Progress:
    """The progress line: step, loss, learning rate, tokens per second; a new line per evaluation."""

    def __init__(self, steps: int):
        self.steps = steps

    def __call__(self, record: dict) -> None:
        step = record["step"]
        draw_bar("step", step, self.steps, f"loss {record['loss']:.3f} lr {record['lr']:.2e} "
                 f"{record['tokens_per_s']:,.0f} tok/s")
        if "held_out" in record:
            print(f"\nstep {step}: training loss {record['loss']:.3f}, held-out {record['held_out']:.3f} nats/token",
                  flush=True)


if __name__ == "__main__":
    sys.exit(run(main, parser()))
