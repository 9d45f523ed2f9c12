#!/usr/bin/env python
"""Screenshots of the interactive views, for the README: each view of minigpt.views, built on the
model in the box, opened in headless chromium (Debian's package, driven by Playwright) with every
request but the page's own blocked, and photographed.

    .venv/bin/python scripts/screenshots.py                 # writes docs/*.png

Needs the views and test extras and `apt-get install chromium`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import decoders
from common import Parser, run
from minigpt import analysis, views
from minigpt.views.browser import chromium, open_offline
from weights import SHAKESPEARE, load_gpt2, load_tokenizer

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?"


def parser() -> Parser:
    parser = Parser(__doc__)
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parents[1] / "docs"))
    return parser


def main(args: argparse.Namespace) -> int:
    model, tok = load_gpt2(SHAKESPEARE), load_tokenizer(SHAKESPEARE)
    ids = torch.tensor([tok.encode(TEXT)])
    trace, tokens = model.trace(ids), tok.token_strings(ids[0])
    prompt = torch.tensor([tok.encode("ROMEO:\n")])
    pages = {
        "view-head": views.head_view(trace, tokens),
        "view-model": views.model_view(trace, tokens),
        "view-logit-lens": views.logit_lens_view(analysis.logit_lens(model, ids), tokens, tok.token_strings),
        "view-choices": views.choices_view(decoders.greedy(model, prompt, max_new_tokens=12), tok.token_strings),
        "view-beam-tree": views.beam_tree_view(decoders.beam_search(model, prompt, num_beams=3, max_new_tokens=6,
                                                                    keep_tree=True), tok.token_strings),
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, chromium() as browser:
        for name, view in pages.items():
            page, seen = open_offline(browser, view.save(Path(scratch) / f"{name}.html"))
            if name == "view-head":  # show a head that does something
                page.select_option("#layer", "1")
                page.select_option("#head", "2")
            if seen["errors"] or seen["blocked"]:
                raise ValueError(f"{name}: the page met {seen}")
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            print(f"wrote {out / f'{name}.png'} ({view.title}; the page is {len(view.html) / 1e6:.1f} MB)")
            page.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(main, parser()))
