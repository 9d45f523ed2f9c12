#!/usr/bin/env python
"""Generate text with one decoder, streaming the tokens as they come (greedy, sampling, contrastive).

    python scripts/generate.py --prompt "ROMEO:" --decoder sample --top-p 0.9 --seed 1
    python scripts/generate.py --prompt "ROMEO:" --decoder contrastive --penalty-alpha 0.6 --top-k 4
    python scripts/generate.py --weights gpt2-medium --prompt "..." --decoder diverse --num-beams 4
    python scripts/generate.py --prompt "ROMEO:" --decoder speculative --draft-tokens 4   # greedy's text, drafted

--decoder speculative is greedy decoding with a draft model guessing --draft-tokens tokens ahead
(decoders.speculative): the same text as greedy, and how many guesses the model accepted. The
draft (--draft) defaults to the one shipped beside the model in the box.
"""

from __future__ import annotations

import argparse
import codecs
import sys
from pathlib import Path

import torch

from common import (DECODER_NAMES, DTYPES, SHIPPED_DRAFT, Parser, add_decoder_arguments, add_model_arguments,
                    eos_token_id, load_model, option, prompt_ids, run, run_decoder, shared_options)
from minigpt import GPT, Tokenizer
from weights import load_gpt2, load_tokenizer
from weights.locate import home_expanded


def parser() -> Parser:
    parser = Parser(__doc__)
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--decoder", choices=DECODER_NAMES, default="greedy")
    add_decoder_arguments(parser)
    parser.add_argument("--draft", help="speculative: the draft's checkpoint directory (default: the shipped draft, "
                                        "weights/shakespeare-draft, for the shipped model)")
    parser.add_argument("--draft-tokens", type=int, default=4, help="speculative: guesses per round (default 4)")
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
    if args.decoder == "speculative":  # the tokens come a round at a time: printed at the end
        out = run_decoder("speculative", args, model, ids, options, draft=load_draft(args, tokenizer))
        new = out.new_tokens[0, : int(out.new_lengths[0])].tolist()
        ends = [] if eos is None else eos if isinstance(eos, list) else [eos]
        print(args.prompt + tokenizer.decode([token for token in new if token not in ends]), end="")
        accepted, proposed = int(out.accepted.sum()), int(out.proposed.sum())
        print(f"\nthe model accepted {accepted} of the draft's {proposed} guesses ({accepted / max(proposed, 1):.0%})",
              file=sys.stderr)
    elif ranked or several:  # ranked at the end, or several texts at once: nothing to stream
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


def load_draft(args: argparse.Namespace, tokenizer: Tokenizer) -> GPT:
    """--draft (or the shipped draft for the shipped model), on the model's device, in its dtype, with
    the model's tokenizer: the same bytes for every token id (its merges may differ; the draft sees ids)."""
    if args.draft is None:
        if args.weights is not None:
            raise ValueError("--decoder speculative needs --draft: a smaller model with this model's tokenizer")
        args.draft = str(SHIPPED_DRAFT)
    directory = home_expanded(Path(args.draft), "--draft")
    draft = option(load_gpt2, "--draft", directory, device=args.device, dtype=DTYPES[args.dtype])
    own = (directory / "vocab.json").exists() or (directory / "merges.txt").exists()
    theirs = option(load_tokenizer, "--draft", directory) if own else Tokenizer.gpt2()
    if theirs.vocab_size != tokenizer.vocab_size or any(
            theirs.decode_bytes([i]) != tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)):
        raise ValueError(f"--draft {directory}: its tokenizer is not the model's (a draft proposes token ids, "
                         "which must mean the same text to both)")
    return draft


if __name__ == "__main__":
    sys.exit(run(main, parser()))
