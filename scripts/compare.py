#!/usr/bin/env python
"""Run the decoders side by side on one prompt: the text, its log-probability under the model,
and how repetitive it is (the share of distinct n-grams; 1.0 means no n-gram repeats).

    python scripts/compare.py --prompt "ROMEO:" --max-new-tokens 60
"""

from __future__ import annotations

import argparse
import sys

import torch

import decoders
from common import (Parser, add_decoder_arguments, add_model_arguments, eos_token_id, load_model, prompt_ids, run,
                    run_decoder, shared_options)


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
    model, directory, what, tokenizer = load_model(args)
    print(what)
    ids = prompt_ids(tokenizer, args.prompt, model)
    options = shared_options(args, eos_token_id(args, directory, model))

    args.num_return_sequences = 1  # one text per decoder
    top_k = args.top_k or 50
    runs = {
        "greedy": lambda: run_decoder("greedy", args, model, ids, options),
        f"beam search ({args.num_beams} beams)": lambda: run_decoder("beam", args, model, ids, options),
        f"diverse beam search ({args.num_beams} beams, {args.num_beam_groups} groups, penalty {args.diversity_penalty})":
            lambda: run_decoder("diverse", args, model, ids, options),
        f"contrastive search (alpha {args.penalty_alpha}, k {args.top_k or 4})":
            lambda: run_decoder("contrastive", args, model, ids, options),
        f"sampling (T={args.temperature})": lambda: run_decoder("sample", args, model, ids, options, top_k=0, top_p=1.0,
                                                                min_p=0.0, typical_p=1.0),
        f"top-k sampling (k={top_k})": lambda: run_decoder("sample", args, model, ids, options, top_k=top_k),
        "nucleus sampling (p=0.9)": lambda: run_decoder("sample", args, model, ids, options, top_p=0.9),
        "min-p sampling (p=0.1)": lambda: run_decoder("sample", args, model, ids, options, min_p=0.1),
        "typical sampling (p=0.9)": lambda: run_decoder("sample", args, model, ids, options, typical_p=0.9),
    }
    print(f"prompt: {args.prompt!r}\n")
    for name, decode in runs.items():
        out = decode()
        new = out.new_tokens[0, : int(out.new_lengths[0])].tolist()
        with torch.no_grad():  # a number to print: no gradient needed
            logp = float(decoders.sequence_logprob(model, out.sequences[:1], out.prompt_length, out.attention_mask[:1]))
        print(f"== {name}")
        print(f"   log p = {logp:.2f} ({logp / max(len(new), 1):.2f} per token, {len(new)} tokens); "
              f"distinct 1/2/3-grams = {distinct(new, 1):.2f} / {distinct(new, 2):.2f} / {distinct(new, 3):.2f}")
        print(f"   {tokenizer.decode(new)!r}\n")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, parser()))
