#!/usr/bin/env python
"""Verify minigpt against transformers on one checkpoint: logits, every layer, greedy tokens, text.

    python scripts/verify.py                       # gpt2 from the HF cache, else random 124M weights
    python scripts/verify.py --weights gpt2-medium # or a checkpoint directory
    python scripts/verify.py --fast float32        # the model made fast (minigpt.fast.optimize)

Exits 1 if any difference is over its tolerance. Then, so that the first command shows what the
project is for, the model in the box (weights/shakespeare, trained on Shakespeare by
scripts/train.py) writes a few lines.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

import decoders
from common import SHIPPED, DTYPES, Parser, add_model_arguments, load_model, positive_int, run
from weights import load_gpt2, load_tokenizer

SHIPPED_PROMPT = "ROMEO:"
PROMPT = "The history of natural language processing generally started in the 1950s, when"
TOLERANCE = {  # max |Δ| allowed, and why
    torch.float32: (1e-4, "float32: both models do the same arithmetic in a different order (~1e-6 seen)"),
    torch.float16: (5e-2, "float16: 11 significant bits; each model rounds differently"),
    torch.bfloat16: (5e-1, "bfloat16: 8 significant bits; each model rounds differently"),
}


def parser() -> Parser:
    parser = Parser(__doc__)
    add_model_arguments(parser, default="gpt2")
    parser.add_argument("--new-tokens", type=positive_int, default=20, help="greedy tokens to compare")
    parser.add_argument("--no-sample", action="store_true", help="skip the lines the shipped Shakespeare model writes")
    return parser


def stage(text: str) -> None:
    """What is being done now, on stderr: loading transformers and a 124M model takes a while."""
    print(f"... {text}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore")
    stage("importing transformers (the reference)")
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()

    stage("finding the checkpoint" + ("" if args.weights else " (writing a random GPT-2 124M if gpt2 is not cached)"))
    ours, directory, what, tokenizer = load_model(args)
    dtype = DTYPES[args.dtype]
    tolerance, reason = TOLERANCE[dtype]
    stage("loading it into minigpt and into transformers")
    theirs = GPT2LMHeadModel.from_pretrained(directory, dtype=dtype).to(args.device).eval()
    ids = torch.tensor([tokenizer.encode(PROMPT)], device=args.device)
    if ids.shape[1] + args.new_tokens > ours.config.n_positions:
        raise ValueError(f"--new-tokens {args.new_tokens} after the {ids.shape[1]}-token prompt exceeds this "
                         f"checkpoint's context of {ours.config.n_positions} positions")
    if int(ids.max()) >= ours.config.vocab_size:  # a checkpoint without a tokenizer and a smaller vocabulary
        ids = ids.clamp(max=ours.config.vocab_size - 1)
        print(f"note: prompt ids above {ours.config.vocab_size - 1} were clamped to fit this vocabulary")

    stage("comparing")
    with torch.no_grad():
        trace = ours.trace(ids)
        reference = theirs(ids, output_hidden_states=True)
    config = ours.config
    print(f"minigpt against transformers' GPT2LMHeadModel, {what}")
    print(f"model: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, vocabulary {config.vocab_size}; "
          f"{args.device}, {args.dtype}; prompt of {ids.shape[1]} tokens")
    print(f"tolerance: max |Δ| <= {tolerance:g} ({reason})\n")
    print(f"{'compared':<28}{'max |Δ|':>12}  ok")
    rows = []
    ref_states = list(reference.hidden_states)
    for layer, (mine, ref) in enumerate(zip(trace.hidden_states, ref_states)):
        if layer == config.n_layer:  # transformers' last hidden state has the final LayerNorm applied
            mine = trace.after_ln_f
        name = "embeddings" if layer == 0 else f"block {layer}" + (" + ln_f" if layer == config.n_layer else "")
        rows.append((f"hidden state: {name}", (mine.float() - ref.float()).abs().max().item()))
    rows.append(("logits", (trace.logits.float() - reference.logits.float()).abs().max().item()))
    for name, diff in rows:
        print(f"{name:<28}{diff:>12.3e}  {'yes' if diff <= tolerance else 'NO'}")
    agree = (trace.logits.argmax(-1) == reference.logits.argmax(-1)).float().mean().item()
    print(f"\ntop-1 agreement over {ids.shape[1]} positions: {agree:.1%}")

    mask = torch.ones_like(ids)
    mine = decoders.greedy(ours, ids, max_new_tokens=args.new_tokens).sequences
    ref_tokens = theirs.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
    same_tokens = torch.equal(mine, ref_tokens)
    print(f"greedy, {args.new_tokens} new tokens: {'identical' if same_tokens else 'DIFFERENT'}")
    if tokenizer.vocab_size == config.vocab_size:  # the tokenizer speaks this model's vocabulary
        text = tokenizer.decode(mine[0, ids.shape[1]:])
        print(f"text identical: {text == tokenizer.decode(ref_tokens[0, ids.shape[1]:])}: {text!r}")
        if "random-weight" in what:
            print("(random weights write noise: what is verified is that both models write the same noise)")
    ok = all(diff <= tolerance for _, diff in rows) and same_tokens
    print("\nPASS" if ok else "\nFAIL")
    if not args.no_sample:
        show_the_model_in_the_box(args.device)
    return 0 if ok else 1


def show_the_model_in_the_box(device: str) -> None:
    """A few lines from the GPT-2 trained on Shakespeare that ships in weights/shakespeare."""
    model, tokenizer = load_gpt2(SHIPPED, device=device), load_tokenizer(SHIPPED)
    ids = torch.tensor([tokenizer.encode(SHIPPED_PROMPT)], device=device)
    out = decoders.contrastive_search(model, ids, penalty_alpha=0.6, top_k=4, max_new_tokens=60,
                                      eos_token_id=tokenizer.eot_id)
    print(f"\nThe model in the box ({SHIPPED.parent.name}/{SHIPPED.name}: 1.6M parameters trained on Shakespeare "
          f"by scripts/train.py) continues {SHIPPED_PROMPT!r} by contrastive search:\n")
    print(tokenizer.decode(out.sequences[0, : out.prompt_length + int(out.new_lengths[0])]))


if __name__ == "__main__":
    sys.exit(run(main, parser()))
