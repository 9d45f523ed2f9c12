"""Which kind of piece this is, read off its names, for `python -m minigpt.check file.py:Name`
without --kind. The rules, first match wins:

- an object (or class) with encode and decode: a tokenizer;
- a class: its forward(x, allowed, kv) makes it a block or an attention, forward(x) a norm or an
  MLP, and its name decides between the two ("block", then "attn"/"attention"; "norm", "mlp");
- a function, by its first parameters: (q, k, v, ...) attend; (scores, logprobs) beam_step;
  (pattern) entropy; (model, ids) importance; (model, ids, n) decoder; (logits, tokens, ...)
  repetition; (logits, temperature, generator) sampler; (logits, top_p or p) top_p; (logits, top_k
  or k) top_k; (n_positions, n_embd) positions.

Anything else asks for --kind: a guess would run the wrong properties and mislead.
"""

from __future__ import annotations

import inspect


def parameters(fn: object) -> list[str]:
    try:
        return [name for name in inspect.signature(fn).parameters if name != "self"]
    except (TypeError, ValueError):
        return []


def infer_kind(piece: object) -> str | None:
    if callable(getattr(piece, "encode", None)) and callable(getattr(piece, "decode", None)):
        return "tokenizer"
    name = getattr(piece, "__name__", "").lower()
    if isinstance(piece, type):
        forward = parameters(getattr(piece, "forward", None))
        pairs = ((("block",), "block"), (("attn", "attention"), "attention")) if "allowed" in forward else \
            ((("norm",), "norm"), (("mlp", "feedforward", "ffn"), "mlp"))
        return next((kind for words, kind in pairs if any(word in name for word in words)), None)
    names = parameters(piece)
    first = tuple(names[:3])
    rules = [(("q", "k", "v"), "attend"), (("scores", "logprobs"), "beam_step"), (("pattern",), "entropy"),
             (("logits", "tokens"), "repetition"), (("logits", "temperature", "generator"), "sampler"),
             (("logits", "top_p"), "top_p"), (("logits", "p"), "top_p"), (("logits", "top_k"), "top_k"),
             (("logits", "k"), "top_k"), (("n_positions", "n_embd"), "positions")]
    for start, kind in rules:
        if first[:len(start)] == start:
            return kind
    if names[:1] == ["model"]:
        return {2: "importance", 3: "decoder"}.get(len(names))
    return None
