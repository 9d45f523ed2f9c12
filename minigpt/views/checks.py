"""What every view checks before it draws: the row it is asked for exists, and there is one token
label per position. A view drawn from the wrong row or with labels shifted against the cells would
be a wrong picture that looks right, the worst thing a teaching tool can show."""

from __future__ import annotations

from ..checks import check_int


def check_row(row: object, rows: int, name: str = "row") -> int:
    """Which row of the batch to draw: an int in [0, rows)."""
    return check_int(name, row, 0, rows - 1)


def check_tokens(tokens: object, positions: int) -> list[str]:
    """One label (a string) per position: `tokenizer.token_strings(ids[row])`."""
    if isinstance(tokens, str) or not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"tokens must be a list of strings, one per position (tokenizer.token_strings(ids[row])), "
                         f"got {tokens!r:.60}")
    if len(tokens) != positions:
        raise ValueError(f"tokens has {len(tokens)} labels but there are {positions} positions: give one per position "
                         "(tokenizer.token_strings(ids[row]))")
    return list(tokens)


def check_trace_view(trace, tokens: object, row: object) -> None:
    """A trace's row and its labels: the row within the batch, a label per position."""
    batch, _, positions, _ = trace.attentions[0].shape
    check_row(row, batch)
    check_tokens(tokens, positions)
