"""What every view checks before it draws, and the labels it draws. The row it is asked for
exists; there is one token label per real position, and padding is left out of the picture; a
token is labelled so that a space, a newline or a lone byte can be seen. A view drawn from the
wrong row, with labels shifted against the cells or with padding drawn as tokens would be a wrong
picture that looks right, the worst thing a teaching tool can show."""

from __future__ import annotations

import torch
from torch import Tensor

from decoders.generation import Generation

from ..checks import check_int
from ..model import Trace

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}  # what whitespace is drawn as


def shown(token: str, width: int | None = None) -> str:
    """A token as a label: whitespace made visible (' the' -> '␣the'), other control characters
    escaped, cut to `width` characters with an ellipsis."""
    text = "".join(VISIBLE.get(c, c if c.isprintable() else repr(c)[1:-1]) for c in token) or "∅"
    return text if width is None or len(text) <= width else text[:width - 1] + "…"


def check_trace(trace: object) -> Trace:
    if not isinstance(trace, Trace):
        raise ValueError(f"trace must be what model.trace(ids) returns, got {type(trace).__name__}")
    return trace


def check_generation(generation: object) -> Generation:
    if not isinstance(generation, Generation):
        raise ValueError(f"generation must be what a decoder returns (a Generation), got {type(generation).__name__}")
    return generation


def check_lens(lens: object) -> Tensor:
    if not isinstance(lens, Tensor) or lens.dim() != 4:
        shape = f"shape {tuple(lens.shape)}" if isinstance(lens, Tensor) else type(lens).__name__
        raise ValueError(f"lens must be analysis.logit_lens's (n_layer + 1, b, t, v) tensor, got {shape}")
    return lens


def check_row(row: object, rows: int, name: str = "row") -> int:
    """Which row of the batch to draw: an int in [0, rows)."""
    return check_int(name, row, 0, rows - 1)


def check_tokens(tokens: object, positions: int, padding: int = 0) -> list[str]:
    """One label (a string) per real position of the row: `tokenizer.token_strings(ids[row])`,
    without the row's `padding` positions."""
    if isinstance(tokens, str) or not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"tokens must be a list of strings, one per position (tokenizer.token_strings(ids[row])), "
                         f"got {tokens!r:.60}")
    if len(tokens) != positions:
        where = (f"{positions} real tokens in this row (its {padding} padding positions are not drawn): give one per "
                 "real token, tokenizer.token_strings(ids[row][attention_mask[row].bool()])" if padding else
                 f"{positions} positions: give one per position (tokenizer.token_strings(ids[row]))")
        raise ValueError(f"tokens has {len(tokens)} labels but there are {where}")
    return list(tokens)


def real_row(real: Tensor | None, tokens: object, row: object, batch: int, positions: int) -> tuple[int, Tensor, list[str]]:
    """The row to draw (checked), the positions of it that hold real tokens ((b t) bool `real`, or
    all when None), and one label per real position (checked)."""
    row = check_row(row, batch)
    keep = torch.arange(positions) if real is None else real[row].nonzero().flatten().cpu()
    return row, keep, check_tokens(tokens, len(keep), padding=positions - len(keep))


def trace_row(trace, tokens: object, row: object) -> tuple[list[Tensor], list[str]]:
    """One row of a trace as the views draw it: each layer's maps (n_head t t) over the row's real
    positions only (a pruned head's map NaN), and one label per real position."""
    batch, _, positions, _ = check_trace(trace).attentions[0].shape
    row, keep, tokens = real_row(trace.real, tokens, row, batch, positions)
    return [pattern[row].detach().float().cpu()[:, keep][:, :, keep] for pattern in trace.attentions], tokens


def pruned(weights: Tensor) -> bool:
    """Whether a head's map (t t) is a pruned head's (Trace fills those with NaN)."""
    return bool(weights.isnan().all())
