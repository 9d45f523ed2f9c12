#!/usr/bin/env python
"""Train a GPT-2 from scratch and save it in the public layout, with its tokenizer beside it.

    python scripts/train.py                      # Shakespeare, the shape of the shipped model, into runs/<time>
    python scripts/train.py --text-file my.txt --n-layer 2 --steps 500 --out my-model
    python scripts/train.py --resume --out my-model   # continue an interrupted run exactly

Nothing a user owns is overwritten by accident: --out must be new, empty, or a run this script
started (with --resume); a directory that holds a checkpoint (the shipped model among them) is
replaced only with --overwrite. Every option and the text are checked before anything is written.
While it trains, the run keeps its own files in --out (training-state.pt, training-tokenizer.json);
the checkpoint's files (config.json, model.safetensors, vocab.json, merges.txt, training.json) are
written at the end, each to a temporary name and renamed, so a failed or interrupted run leaves
an earlier checkpoint there whole.

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
import time
from pathlib import Path

import torch

from common import SHIPPED, Parser, add_threads_argument, draw_bar, finite_float, non_negative_int, option, positive_int, run
from minigpt import GPT, GPTConfig, Tokenizer
from minigpt.checks import check_device
from minigpt.files import write_text_atomically
from minigpt.training import TokenWindows, TrainConfig, shakespeare, split_by_play, train
from weights import save_gpt2
from weights.locate import home_expanded

HELD_OUT = ["julius-caesar", "the-tempest", "twelfth-night"]  # a Roman play, a romance, a comedy
CHECKPOINT_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "training.json"]
STATE, TOKENIZER = "training-state.pt", "training-tokenizer"  # the run's own, while it trains: its state and
# its tokenizer (vocab.json, merges.txt), kept apart from the checkpoint's until the run ends


def parser() -> Parser:
    parser = Parser(__doc__)
    parser.add_argument("--out", help="the checkpoint directory to write (default: a new runs/train-<time>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the checkpoint already in --out (the old one stays whole until the run ends)")
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
    loop.add_argument("--resume", action="store_true", help="continue the run in --out (its training-state.pt)")
    add_threads_argument(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    option(check_device, "--device", args.device)
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=args.vocab_size,
                       n_positions=args.block, dropout=args.dropout)  # checked (--dropout too) before any work is done
    loop = TrainConfig(steps=args.steps, batch=args.batch, accumulate=args.accumulate, lr=args.lr, min_lr=args.min_lr,
                       warmup=args.warmup, weight_decay=args.weight_decay, clip=args.clip, eval_every=args.eval_every,
                       save_every=args.save_every, dtype=args.dtype)
    out = output_directory(args)
    torch.manual_seed(args.seed)
    train_text, held_out_text, where = corpus(args)
    tokenizer = tokenizer_for(train_text, args, out)
    eot = tokenizer.eot_id
    train_ids, held_ids = (torch.tensor(stream(tokenizer, text)) for text in (train_text, held_out_text))
    for name, ids in (("training", train_ids), ("held-out", held_ids)):
        if len(ids) < args.block + 1:
            raise ValueError(f"the {name} text is {len(ids)} tokens, too short for --block {args.block}: a window "
                             f"needs {args.block + 1}; give a longer --text-file or a smaller --block")
    print(f"corpus: {where}; {len(train_ids):,} training and {len(held_ids):,} held-out tokens "
          f"(vocabulary {tokenizer.vocab_size})")

    # The options and the text are checked: only now is anything written (train still checks, before its first
    # step, that a batch fits in memory; failing there leaves only the run's own training-tokenizer/ behind)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {out}: {err.strerror or err}") from None
    if not args.resume:
        (out / TOKENIZER).mkdir(exist_ok=True)
        tokenizer.save(out / TOKENIZER)
    model = GPT(config).to(args.device)
    print(f"model: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, context {config.n_positions}: "
          f"{config.parameter_count:,} parameters; {loop.steps} steps of "
          f"{loop.batch * loop.accumulate * args.block:,} tokens; {torch.get_num_threads()} threads, {args.dtype}")
    print(f"writing to {out}")
    try:
        history = train(model, TokenWindows(train_ids, args.block, seed=args.seed),
                        TokenWindows(held_ids, args.block, seed=0), loop, state_path=out / STATE,
                        resume=args.resume, report=Progress(loop.steps))
    except KeyboardInterrupt:
        print(f"\ninterrupted; {out / STATE} holds the last saved step (every --save-every {loop.save_every}): "
              f"continue with --resume --out {out}", file=sys.stderr)
        return 130

    held_out_nats = history[-1]["held_out"]
    unigram = unigram_loss(train_ids, held_ids, tokenizer.vocab_size)
    held_bytes = len(held_out_text.encode("utf-8"))
    report = {"held_out_nats_per_token": held_out_nats,
              "held_out_bits_per_byte": held_out_nats * len(held_ids) / held_bytes / math.log(2),
              "unigram_nats_per_token": unigram,
              "unigram_bits_per_byte": unigram * len(held_ids) / held_bytes / math.log(2),
              "held_out_tokens": len(held_ids), "held_out_bytes": held_bytes, "history": history}
    save_gpt2(model.cpu(), out, eos_token_id=eot, overwrite=True)  # each file replaced whole
    tokenizer.save(out)
    write_text_atomically(out / "training.json", json.dumps(report, indent=1) + "\n")
    print(f"\nheld out: {held_out_nats:.3f} nats/token, {report['held_out_bits_per_byte']:.3f} bits/byte; "
          f"unigram baseline {unigram:.3f} nats/token, {report['unigram_bits_per_byte']:.3f} bits/byte")
    print(f"wrote {out}: {', '.join(CHECKPOINT_FILES)}")
    return 0


def output_directory(args: argparse.Namespace) -> Path:
    """--out, checked before anything is written: new or empty; or, with --resume, a run this script
    started; a directory holding a checkpoint (or another run) only with --overwrite."""
    if args.out is None:
        if args.resume:
            raise ValueError("--resume needs --out: the directory of the run to continue")
        return Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    out = home_expanded(Path(args.out), "--out")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    held = [name for name in CHECKPOINT_FILES + [STATE, TOKENIZER] if (out / name).exists()]
    if out.resolve() == SHIPPED.resolve() and not args.overwrite:
        raise ValueError(f"--out {out} is the model shipped with minigpt; pass --overwrite to replace it "
                         "(git checkout weights/shakespeare brings it back)")
    if args.resume:
        missing = [name for name in (STATE, TOKENIZER) if not (out / name).exists()]
        if missing:
            raise ValueError(f"--resume: {out} holds no run to continue (no {' or '.join(missing)})")
    elif held and not args.overwrite:
        raise ValueError(f"--out {out} already holds a checkpoint or a run ({', '.join(held)}); pass --overwrite "
                         "to replace it when this run ends, --resume to continue its run, or another --out")
    return out


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
    """A resumed run keeps the tokenizer it was started with; a new run learns one (written to --out
    only once everything is checked)."""
    if not args.resume:
        return Tokenizer.train(text, args.vocab_size)
    saved = out / TOKENIZER
    tokenizer = option(Tokenizer.from_files, "--resume", saved / "vocab.json", saved / "merges.txt")
    if tokenizer.vocab_size != args.vocab_size:
        raise ValueError(f"--resume: the run in {out} has a vocabulary of {tokenizer.vocab_size}, not --vocab-size {args.vocab_size}")
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
        self.steps, self.first = steps, True

    def __call__(self, record: dict) -> None:
        step = record["step"]
        if self.first and step > 1:
            print(f"resumed at step {step - 1} of {self.steps}", flush=True)
        self.first = False
        draw_bar("step", step, self.steps, f"loss {record['loss']:.3f} lr {record['lr']:.2e} "
                 f"{record['tokens_per_s']:,.0f} tok/s")
        if "held_out" in record:
            print(f"\nstep {step}: training loss {record['loss']:.3f}, held-out {record['held_out']:.3f} nats/token",
                  flush=True)


if __name__ == "__main__":
    sys.exit(run(main, parser()))
