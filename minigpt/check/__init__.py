"""minigpt.check: a learner's own piece, run through the properties its lesson rests on, with a
diagnosis that names the idea it gets wrong.

    from minigpt.check import check
    print(check(my_attention, "attend"))

or, from a shell, `python -m minigpt.check path/to/file.py:Name --kind attend`.

Kinds, each the contract already written beside minigpt's own piece:
- "attend": an attention kernel, attend(q, k, v, allowed, dropout_p, at) -> out (`AttendFn`);
- "attention", "block", "mlp", "norm": a factory GPTConfig -> module (a class taking the config
  will do): the `Attention` and `Block` protocols, the MLP and the norm, x (b t e) -> (b t e);
- "top_p", "top_k": fn(logits (b v), amount) -> logits, the tokens left out at -inf;
- "repetition": fn(logits (b v), tokens (b s), penalty) -> logits, the CTRL repetition penalty;
- "sampler": fn(logits (b v), temperature, generator) -> token ids (b);
- "decoder": fn(model, input_ids (b t), max_new_tokens) -> (b t+n) ids, or a Generation: greedy;
- "beam_step": fn(scores (b k), logprobs (b k v)) -> (scores, parents, tokens), each (b k);
- "entropy": fn(pattern (b h t s)) -> (b h t), attention entropy in nats;
- "importance": fn(model, input_ids (b t)) -> (l h), head importance |∂L/∂ξ| (Michel et al. 2019);
- "positions": fn(n_positions, n_embd) -> (n_positions, n_embd), the sinusoidal position table;
- "tokenizer": an object with encode(text) -> ids and decode(ids) -> text: GPT-2's.

Each property is run over examples hypothesis draws and, on failure, shrinks (properties.py);
the wrong ideas are listed with what to read in causes.py, and recognised by probes (variants.py).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..checks import check_choice
from .causes import CAUSES, Cause
from .beam import beam_suite
from .decoding import decoder_suite, entropy_suite, filter_suite, sampler_suite
from .kernel import kernel_suite
from .importance import importance_suite
from .modules import module_suite
from .positions import positions_suite
from .repetition import repetition_suite
from .report import Finding, Report
from .text import tokenizer_suite

SUITES: dict[str, Callable] = {
    "attend": kernel_suite,
    "attention": lambda piece: module_suite("attention", piece),
    "block": lambda piece: module_suite("block", piece),
    "mlp": lambda piece: module_suite("mlp", piece),
    "norm": lambda piece: module_suite("norm", piece),
    "top_p": lambda piece: filter_suite(piece, "top_p"),
    "top_k": lambda piece: filter_suite(piece, "top_k"),
    "repetition": repetition_suite,
    "sampler": sampler_suite,
    "decoder": decoder_suite,
    "beam_step": beam_suite,
    "entropy": entropy_suite,
    "importance": importance_suite,
    "positions": positions_suite,
    "tokenizer": tokenizer_suite,
}
KINDS = tuple(SUITES)
NAMES = {"attend": "attention kernel", "top_p": "top-p filter", "top_k": "top-k filter", "beam_step": "beam step",
         "importance": "head importance", "positions": "position scheme",
         "repetition": "repetition penalty"}


def check(piece: object, kind: str) -> Report:
    """Run `kind`'s properties on `piece`; returns the Report (print it to read it)."""
    kind = check_choice("kind", kind, KINDS)
    if kind == "tokenizer":
        if isinstance(piece, type):
            piece = piece()
        if not (callable(getattr(piece, "encode", None)) and callable(getattr(piece, "decode", None))):
            raise ValueError(f"a tokenizer must have encode(text) and decode(ids) methods, got {type(piece).__name__}")
    elif not callable(piece):
        raise ValueError(f"a {NAMES.get(kind, kind)} must be callable (a function, or a class for a module), "
                         f"got {type(piece).__name__}")
    start = time.perf_counter()
    with torch.random.fork_rng():  # the suites seed torch; the learner's own random state is left as it was
        findings, probe = SUITES[kind](piece)
    return Report(NAMES.get(kind, kind), getattr(piece, "__name__", type(piece).__name__), findings, probe,
                  time.perf_counter() - start)


__all__ = ["CAUSES", "Cause", "Finding", "KINDS", "Report", "check"]
