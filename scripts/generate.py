#!/usr/bin/env python
"""Generate text with one decoder, streaming the tokens as they come (greedy and sampling).

    python scripts/generate.py --prompt "Once upon a time" --decoder sample --top-p 0.9 --seed 1
    python scripts/generate.py --weights gpt2-medium --prompt "..." --decoder beam --num-beams 5
"""

from __future__ import annotations

import argparse
import codecs
import sys

import torch

import decoders
from common import (Parser, add_decoder_arguments, add_model_arguments, early_stopping, eos_token_id, load_model,
                    prompt_ids, run, shared_options)
from minigpt import Tokenizer


def parser() -> Parser:
    parser = Parser(__doc__)
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--decoder", choices=["greedy", "beam", "sample"], default="greedy")
    add_decoder_arguments(parser)
    parser.add_argument("--choices", action="store_true", help="print the choices-per-step table afterwards")
    return parser


def main(args: argparse.Namespace) -> int:
    model, directory, what = load_model(args)
    print(what, file=sys.stderr)
    tokenizer = Tokenizer.gpt2()
    ids = prompt_ids(tokenizer, args.prompt, model)
    eos = eos_token_id(args, directory, model)
    options = shared_options(args, eos)

    text = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a token may end mid-character
    started = False  # the prompt is printed with the first token, once the decoder has accepted the options

    def stream(tokens: torch.Tensor) -> None:
        nonlocal started
        if not started:
            print(args.prompt, end="", flush=True)
            started = True
        token = int(tokens[0])
        if eos is None or token not in (eos if isinstance(eos, list) else [eos]):
            print(text.decode(tokenizer.decode_bytes([token])), end="", flush=True)

    if args.decoder == "greedy":
        out = decoders.greedy(model, ids, on_token=stream, **options)
    elif args.decoder == "sample":
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
        out = decoders.sample(model, ids, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              generator=generator, on_token=stream, **options)
    else:
        out = decoders.beam_search(model, ids, num_beams=args.num_beams, length_penalty=args.length_penalty,
                                   early_stopping=early_stopping(args.early_stopping),
                                   num_return_sequences=args.num_return_sequences, **options)
        print(args.prompt, end="")
        for row in range(out.sequences.shape[0]):
            new = out.new_tokens[row, : int(out.new_lengths[row])]
            label = f"\n[beam {row}, score {float(out.sequence_scores[row]):.3f}] " if row else ""
            print(label + tokenizer.decode(new), end="")
    print(text.decode(b"", final=True))
    if args.choices:
        print(out.choices(0, tokenizer.decode))
    return 0


if __name__ == "__main__":
    sys.exit(run(main, parser()))
