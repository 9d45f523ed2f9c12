"""Positions and distances read off the attention mask, so that position-aware attention needs
nothing the Attention contract does not already pass.

`allowed` (b 1 t s) says which keys each query may see: its own real tokens up to itself, with
left padding and the cache's empty slots excluded. The positions the model counts (model.py's
`visibility`) are counts of real tokens, so both numbers follow from the mask alone:

- a query's position is how many keys it may see, less one (itself);
- the distance from a query back to a key it may see is how many of its visible keys come after
  that key: in real tokens, so a left-padded row gets the distances it gets alone.
"""

from __future__ import annotations

from torch import Tensor


def query_positions(allowed: Tensor) -> Tensor:
    """allowed (b 1 t s) -> each query's position (b 1 t 1), 0 for the first real token."""
    return allowed.sum(dim=-1, keepdim=True) - 1


def distances(allowed: Tensor) -> Tensor:
    """allowed (b 1 t s) -> (b 1 t s): for each key a query may see, how many real tokens back it
    lies (0: the query itself). Where the query may not look the value means nothing."""
    seen_from_here_on = allowed.flip(-1).cumsum(dim=-1).flip(-1)  # visible keys at or after each slot
    return seen_from_here_on - 1
