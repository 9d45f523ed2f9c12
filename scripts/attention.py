#!/usr/bin/env python
"""What each attention head looks at: attention maps (layers x heads) and each head's entropy.

    python scripts/attention.py --text "The cat sat on the mat because it was tired."

Prints the entropy table (nats: 0 means a head looks at one token, log n that it spreads evenly
over n) and writes attention_maps.png, attention_entropy.png and attention.html (pick a layer and
a head, hover a cell; opens offline in any browser) to --out-dir.
"""

from __future__ import annotations

import argparse
import sys

import torch

from common import (PICTURES_HINT, SAMPLE_TEXT, Parser, add_model_arguments, add_output_argument, load_model,
                    output_dir, pictures, prompt_ids, run, save, table)
from minigpt import analysis


def parser() -> Parser:
    parser = Parser(__doc__)
    add_model_arguments(parser)
    parser.add_argument("--text", default=SAMPLE_TEXT[:60], help="the text to look at (default: a line of Dickens)")
    add_output_argument(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    model, _, what, tokenizer = load_model(args)
    print(what)
    ids = prompt_ids(tokenizer, args.text, model, "--text")
    if ids.shape[1] > model.config.n_positions:
        raise ValueError(f"--text is {ids.shape[1]} tokens, more than the model's context of {model.config.n_positions}")
    labels = [repr(tokenizer.decode([i]))[1:-1] for i in ids[0].tolist()]
    entropy = analysis.attention_entropy(model, ids)
    config = model.config
    print(f"{ids.shape[1]} tokens: {' | '.join(labels)}\n")
    print("attention entropy (nats) of each head, averaged over query positions; "
          "0 = looks at one token, higher = spreads out")
    print(table([[str(layer), *(f"{e:.2f}" for e in row)] for layer, row in enumerate(entropy.tolist())],
                ["layer", *(f"h{head}" for head in range(config.n_head))]))
    views = pictures()
    if views is None:
        print(f"\n{PICTURES_HINT}")
        return 0
    out = output_dir(args)
    with torch.no_grad():
        trace = model.trace(ids)
    tokens = tokenizer.token_strings(ids[0])
    maps = save(views.figures.attention_maps(trace, tokens), out / "attention_maps.png")
    heat = save(views.figures.head_heatmap(entropy, "attention entropy per head (nats)", "entropy (nats)"),
                out / "attention_entropy.png")
    page = save(views.head_view(trace, tokens), out / "attention.html")
    print(f"\nwrote {maps}, {heat} and {page}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, parser()))
