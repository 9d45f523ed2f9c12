#!/usr/bin/env python
"""Run the decoders side by side on one prompt: the text, its log-probability under the model,
and how repetitive it is (the share of distinct n-grams; 1.0 means no n-gram repeats).

    python scripts/compare.py --prompt "The meaning of life is" --max-new-tokens 60
"""

from __future__ import annotations

import argparse
import sys

import torch

import decoders
from common import (Parser, add_decoder_arguments, add_model_arguments, early_stopping, eos_token_id, load_model,
                    prompt_ids, run, shared_options)
from minigpt import Tokenizer


def distinct(tokens: list[int], n: int) -> float:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def parser() -> Parser:
    parser = Parser(__doc__)
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True)
    add_decoder_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    model, directory, what = load_model(args)
    print(what)
    tokenizer = Tokenizer.gpt2()
    ids = prompt_ids(tokenizer, args.prompt, model)
    options = shared_options(args, eos_token_id(args, directory, model))

    def seeded() -> torch.Generator:
        return torch.Generator(device=args.device).manual_seed(args.seed)

    runs = {
        "greedy": lambda: decoders.greedy(model, ids, **options),
        f"beam search ({args.num_beams} beams)": lambda: decoders.beam_search(
            model, ids, num_beams=args.num_beams, length_penalty=args.length_penalty,
            early_stopping=early_stopping(args.early_stopping), **options),
        f"sampling (T={args.temperature})": lambda: decoders.sample(model, ids, temperature=args.temperature,
                                                                    generator=seeded(), **options),
        "top-k sampling (k=50)": lambda: decoders.sample(model, ids, top_k=50, generator=seeded(), **options),
        "nucleus sampling (p=0.9)": lambda: decoders.sample(model, ids, top_p=0.9, generator=seeded(), **options),
    }
    print(f"prompt: {args.prompt!r}\n")
    for name, run in runs.items():
        out = run()
        new = out.new_tokens[0, : int(out.new_lengths[0])].tolist()
        logp = float(decoders.sequence_logprob(model, out.sequences[:1], out.prompt_length, out.attention_mask[:1]))
        print(f"== {name}")
        print(f"   log p = {logp:.2f} ({logp / max(len(new), 1):.2f} per token, {len(new)} tokens); "
              f"distinct 1/2/3-grams = {distinct(new, 1):.2f} / {distinct(new, 2):.2f} / {distinct(new, 3):.2f}")
        print(f"   {tokenizer.decode(new)!r}\n")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, parser()))
