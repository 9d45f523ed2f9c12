#!/usr/bin/env python
"""Generate text with one decoder, streaming the tokens as they come (greedy, sampling, contrastive).

    python scripts/generate.py --prompt "ROMEO:" --decoder sample --top-p 0.9 --seed 1
    python scripts/generate.py --prompt "ROMEO:" --decoder contrastive --penalty-alpha 0.6 --top-k 4
    python scripts/generate.py --weights gpt2-medium --prompt "..." --decoder diverse --num-beams 4
"""

from __future__ import annotations

import argparse
import codecs
import sys

import torch

from common import (DECODER_NAMES, Parser, add_decoder_arguments, add_model_arguments, eos_token_id, load_model,
                    prompt_ids, run, run_decoder, shared_options)


def parser() -> Parser:
    parser = Parser(__doc__)
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--decoder", choices=DECODER_NAMES, default="greedy")
    add_decoder_arguments(parser)
    parser.add_argument("--choices", action="store_true", help="print the choices-per-step table afterwards")
    return parser


def main(args: argparse.Namespace) -> int:
    model, directory, what, tokenizer = load_model(args)
    print(what, file=sys.stderr)
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

    ranked, several = args.decoder in ("beam", "diverse"), args.num_return_sequences > 1
    if several and not ranked and args.decoder != "sample":
        raise ValueError(f"--num-return-sequences {args.num_return_sequences}: {args.decoder} writes one continuation "
                         "per prompt (it draws nothing at random); use --decoder sample, beam or diverse")
    if ranked or several:  # ranked at the end, or several texts at once: nothing to stream
        out = run_decoder(args.decoder, args, model, ids, options)
        print(args.prompt, end="")
        for row in range(out.sequences.shape[0]):
            new = out.new_tokens[row, : int(out.new_lengths[row])]
            label = (f"[beam {row}, score {float(out.sequence_scores[row]):.3f}]" if ranked else f"[sample {row}]")
            print((f"\n{label} " if row else "") + tokenizer.decode(new), end="")
    else:
        out = run_decoder(args.decoder, args, model, ids, options, on_token=stream)
    print(text.decode(b"", final=True))
    if args.choices:
        print(out.choices(0, tokenizer.decode))
    return 0


if __name__ == "__main__":
    sys.exit(run(main, parser()))
