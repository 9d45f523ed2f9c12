#!/usr/bin/env python
"""Train a GPT-2 from scratch and save it in the public layout, with its tokenizer beside it.

    python scripts/train.py                      # Shakespeare, the shape of the shipped model, into runs/<time>
    python scripts/train.py --text my.txt --n-layer 2 --steps 500 --out my-model
    python scripts/train.py --data data/owt --out owt-model   # a corpus scripts/prepare.py tokenized
    python scripts/train.py --resume --out my-model   # continue an interrupted run exactly
    torchrun --nproc_per_node 2 scripts/train.py --out my-model   # data parallel: 2 processes

Nothing a user owns is overwritten by accident: --out must be new, empty, or a run this script
started (with --resume); a directory that holds a checkpoint (the shipped model among them) is
replaced only with --overwrite. Every option and the text are checked before anything is written.
While it trains, the run keeps its own files in --out (training-state.pt, and training-corpus/,
the text tokenized, unless --data names a corpus); the checkpoint's files (config.json,
model.safetensors, vocab.json, merges.txt, training.json) are written at the end, each to a
temporary name and renamed, so a failed or interrupted run leaves an earlier checkpoint there whole.

The corpus defaults to Shakespeare's plays (the `train` extra installs them), three plays held out.
The text goes through scripts/prepare.py's path: a byte-level BPE is learned from the training
text (`Tokenizer.train`), the text is tokenized into token files, and training reads windows from
them by memory map. The loop is `minigpt.training.train`; this script reads the options, shows
progress, and reports the held-out loss in nats per token and bits per byte against a unigram
baseline on the same text.

Under torchrun every process runs this script: each trains on its share of every global batch
(--batch x --accumulate x processes windows a step) and rank 0 alone prints and writes. A run
resumes with any number of processes that keeps the global batch (see minigpt/training/state.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import (SHIPPED, Parser, add_threads_argument, draw_bar, finite_float, make_directory, non_negative_int, option,
                    positive_int, run)
from minigpt import GPT, GPTConfig
from minigpt.checks import check_device
from minigpt.files import write_text_atomically
from minigpt.training import Ranks, TokenCorpus, TokenWindows, TrainConfig, train
from prepare import Progress as Tokenizing
from prepare import add_corpus_arguments, prepare_from
from weights import save_gpt2
from weights.locate import home_expanded

CHECKPOINT_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "training.json"]
STATE, CORPUS = "training-state.pt", "training-corpus"  # the run's own, while it trains: its state and its
# corpus, tokenized (with its tokenizer), kept apart from the checkpoint's files until the run ends
UNIGRAM_TOKENS = 1 << 24  # the unigram baseline counts the first 16M training tokens (all of Shakespeare's)


def parser() -> Parser:
    parser = Parser(__doc__)
    parser.add_argument("--out", help="the checkpoint directory to write (default: a new runs/train-<time>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the checkpoint already in --out (the old one stays whole until the run ends)")
    parser.add_argument("--data", help="a corpus scripts/prepare.py wrote (instead of --text or Shakespeare)")
    parser.add_argument("--text-file", dest="text", nargs="+", help=argparse.SUPPRESS)  # the old name of --text
    add_corpus_arguments(parser)
    shape = parser.add_argument_group("model shape")
    shape.add_argument("--n-layer", type=positive_int, default=4)
    shape.add_argument("--n-head", type=positive_int, default=4)
    shape.add_argument("--n-embd", type=positive_int, default=160)
    shape.add_argument("--block", type=positive_int, default=128, help="tokens per training sequence (the context)")
    shape.add_argument("--dropout", type=finite_float, default=0.0)
    loop = parser.add_argument_group("training")
    defaults = TrainConfig()
    loop.add_argument("--steps", type=positive_int, default=defaults.steps)
    loop.add_argument("--batch", type=positive_int, default=defaults.batch, help="sequences per micro-batch, per process")
    loop.add_argument("--accumulate", type=positive_int, default=defaults.accumulate)
    loop.add_argument("--lr", type=finite_float, default=defaults.lr)
    loop.add_argument("--min-lr", type=finite_float, default=defaults.min_lr)
    loop.add_argument("--warmup", type=non_negative_int, default=defaults.warmup)
    loop.add_argument("--weight-decay", type=finite_float, default=defaults.weight_decay)
    loop.add_argument("--clip", type=finite_float, default=defaults.clip)
    loop.add_argument("--eval-every", type=positive_int, default=defaults.eval_every)
    loop.add_argument("--save-every", type=positive_int, default=defaults.save_every)
    loop.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="bfloat16: autocast")
    loop.add_argument("--compile", action="store_true", help="torch.compile the step (faster after a few seconds' start)")
    loop.add_argument("--seed", type=non_negative_int, default=0)
    loop.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    loop.add_argument("--resume", action="store_true", help="continue the run in --out (its training-state.pt)")
    add_threads_argument(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    device = option(check_device, "--device", args.device)
    ranks = Ranks.from_env(device.type)
    try:
        return train_run(args, ranks, ranks.device(args.device))
    finally:
        ranks.close()


def train_run(args: argparse.Namespace, ranks: Ranks, device: str) -> int:
    loop = TrainConfig(steps=args.steps, batch=args.batch, accumulate=args.accumulate, lr=args.lr, min_lr=args.min_lr,
                       warmup=args.warmup, weight_decay=args.weight_decay, clip=args.clip, eval_every=args.eval_every,
                       save_every=args.save_every, dtype=args.dtype, compile=args.compile)
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=args.vocab_size,
                       n_positions=args.block, dropout=args.dropout)  # checked (--dropout too) before any work is done
    if ranks.machines and args.data is None:
        raise ValueError("on several machines, give --data: a corpus scripts/prepare.py wrote where every machine "
                         "reads it (rank 0 alone would tokenize the text, on its own disk)")
    out = ranks.agree(output_directory(args))
    say = print if ranks.writer else lambda *words, **where: None
    corpus = TokenCorpus.open(ranks.on_writer(lambda: corpus_directory(args, out)))
    config = dataclasses.replace(config, vocab_size=corpus.tokenizer.vocab_size)  # --data brings its own
    say(f"corpus: {corpus.directory}; {len(corpus.train):,} training and {len(corpus.held_out):,} held-out tokens "
        f"(vocabulary {corpus.tokenizer.vocab_size})")
    torch.manual_seed(args.seed)
    model = GPT(config).to(device)
    processes = f"; {ranks.count} processes" if ranks.count > 1 else ""
    say(f"model: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, context {config.n_positions}: "
        f"{config.parameter_count:,} parameters; {loop.steps} steps of "
        f"{loop.batch * loop.accumulate * ranks.count * args.block:,} tokens; {torch.get_num_threads()} threads, "
        f"{args.dtype}{processes}")
    say(f"writing to {out}")
    try:
        history = train(model, TokenWindows(corpus.train, args.block, seed=args.seed),
                        TokenWindows(corpus.held_out, args.block, seed=0), loop, state_path=out / STATE,
                        resume=args.resume, report=Progress(loop.steps) if ranks.writer else lambda record: None,
                        ranks=ranks)
    except KeyboardInterrupt:
        say(f"\ninterrupted; {out / STATE} holds the last saved step (every --save-every {loop.save_every}): "
            f"continue with --resume --out {out}", file=sys.stderr)
        return 130
    if not ranks.writer:
        return 0

    held_out_nats, held_bytes = history[-1]["held_out"], corpus.info["bytes"]["held_out"]
    unigram = unigram_loss(corpus.train, corpus.held_out, config.vocab_size)
    report = {"held_out_nats_per_token": held_out_nats,
              "held_out_bits_per_byte": held_out_nats * len(corpus.held_out) / held_bytes / math.log(2),
              "unigram_nats_per_token": unigram,
              "unigram_bits_per_byte": unigram * len(corpus.held_out) / held_bytes / math.log(2),
              "held_out_tokens": len(corpus.held_out), "held_out_bytes": held_bytes, "history": history}
    save_gpt2(model.cpu(), out, eos_token_id=corpus.info["eot_id"], overwrite=True)  # each file replaced whole
    corpus.tokenizer.save(out)
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
    held = [name for name in CHECKPOINT_FILES + [STATE, CORPUS] if (out / name).exists()]
    if out.resolve() == SHIPPED.resolve() and not args.overwrite:
        raise ValueError(f"--out {out} is the model shipped with minigpt; pass --overwrite to replace it "
                         "(git checkout weights/shakespeare brings it back)")
    if args.resume:
        run_files = [STATE] if args.data else [STATE, CORPUS]
        missing = [name for name in run_files if not (out / name).exists()]
        if missing:
            hint = "; a run started with --data resumes with the same --data" if missing == [CORPUS] else ""
            raise ValueError(f"--resume: {out} holds no run to continue (no {' or '.join(missing)}){hint}")
    elif held and not args.overwrite:
        raise ValueError(f"--out {out} already holds a checkpoint or a run ({', '.join(held)}); pass --overwrite "
                         "to replace it when this run ends, --resume to continue its run, or another --out")
    return out


def corpus_directory(args: argparse.Namespace, out: Path) -> Path:
    """The prepared corpus to train on: --data; a resumed run's own; or the text tokenized now, into a
    temporary directory, checked, and only then moved into --out (rank 0 does this; the others wait)."""
    if args.data is not None:
        if args.text is not None or args.tokenizer is not None:
            raise ValueError("--data is a corpus already tokenized: give it without --text or --tokenizer")
        corpus = checked_corpus(home_expanded(Path(args.data), "--data"), args)
        make_directory(out, "--out")
        return corpus
    if args.resume:
        return checked_corpus(out / CORPUS, args)
    scratch = Path(tempfile.mkdtemp(prefix="minigpt-corpus-"))
    try:
        prepare_from(args, scratch, progress=Tokenizing())
        print(file=sys.stderr)
        checked_corpus(scratch, args)
        make_directory(out, "--out")
        shutil.rmtree(out / CORPUS, ignore_errors=True)  # an earlier run's, which --overwrite replaces
        shutil.move(scratch, out / CORPUS)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out / CORPUS


def checked_corpus(directory: Path, args: argparse.Namespace) -> Path:
    corpus = TokenCorpus.open(directory)
    for name, tokens in (("training", corpus.train), ("held-out", corpus.held_out)):
        if len(tokens) < args.block + 1:
            raise ValueError(f"the {name} text is {len(tokens)} tokens, too short for --block {args.block}: a window "
                             f"needs {args.block + 1}; give a longer text or a smaller --block")
    return directory


def unigram_loss(train_ids: np.ndarray, held_ids: np.ndarray, vocab_size: int) -> float:
    """Held-out nats per token of the model that ignores context: each token's training frequency
    (add-one smoothed, so an unseen token is not infinitely surprising) over the first training tokens."""
    counts = torch.from_numpy(np.bincount(train_ids[:UNIGRAM_TOKENS], minlength=vocab_size)).double() + 1
    logp = (counts / counts.sum()).log()
    return float(-logp[torch.from_numpy(held_ids.astype(np.int64))].mean())


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
