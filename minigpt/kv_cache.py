"""A key/value cache, preallocated to the length a generation needs and written by position.

Decoding one token at a time recomputes nothing: each layer's keys and values for the positions
already seen are kept here, and a step only computes the new position's. The cache also keeps the
padding mask of every cached position, so a left-padded batch can decode without the caller
carrying the mask along. It is passed in explicitly: `model(ids, cache=cache)`.

Layout: keys and values are (layer, b, h, max_length, d); `length` positions are filled.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import Tensor

from .checks import check_device, check_dtype, check_fits_in_memory, check_int


class KVCache:
    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_head: int,
        head_dim: int,
        max_length: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        for name, value in (("n_layer", n_layer), ("batch", batch), ("n_head", n_head), ("head_dim", head_dim),
                            ("max_length", max_length)):
            check_int(name, value, low=1)
        dtype = check_dtype(dtype)
        device = check_device("cpu" if device is None else device)
        shape = (n_layer, batch, n_head, max_length, head_dim)
        check_fits_in_memory(2 * math.prod(shape) * dtype.itemsize, f"a KV cache of {batch} rows x {max_length} positions",
                             device)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.mask = torch.zeros(batch, max_length, device=device, dtype=torch.bool)  # True: a real token
        self.length = 0

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch: int, max_length: int) -> KVCache:
        """A cache shaped for `model`, on its device and in its dtype."""
        c = model.config
        check_int("max_length", max_length, 1, c.n_positions)  # more positions than the model has embeddings for
        weight = model.wte.weight
        return cls(c.n_layer, batch, c.n_head, c.head_dim, max_length, device=weight.device, dtype=weight.dtype)

    @property
    def batch(self) -> int:
        return self.keys.shape[1]

    @property
    def max_length(self) -> int:
        return self.keys.shape[3]

    @property
    def nbytes(self) -> int:
        """Memory held by the preallocated keys, values and mask."""
        return sum(t.element_size() * t.nelement() for t in (self.keys, self.values, self.mask))

    def writer(self, layer: int) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """The function layer `layer` calls with its new keys and values (b h t d)."""
        return partial(self._write, layer)

    def _write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # A layer with pruned heads writes fewer than n_head: it uses the first h slots.
        h, end = k.shape[1], self.length + k.shape[2]
        self.keys[layer, :, :h, self.length : end] = k
        self.values[layer, :, :h, self.length : end] = v
        return self.keys[layer, :, :h, :end], self.values[layer, :, :h, :end]  # (b h s d), s = end

    def check_room(self, new: int) -> None:
        if self.length + new > self.max_length:
            raise ValueError(
                f"KVCache is full: it holds {self.length} of max_length={self.max_length} positions "
                f"and cannot take {new} more"
            )

    def advance(self, new_mask: Tensor) -> None:
        """Called by the model after every layer has written: the new positions are now cached."""
        end = self.length + new_mask.shape[1]
        self.mask[:, self.length : end] = new_mask
        self.length = end

    def reorder(self, rows: Tensor) -> None:
        """Row i becomes old row rows[i] (beam search keeps the beams it chose)."""
        if not isinstance(rows, Tensor) or rows.shape != (self.batch,):
            raise ValueError(f"reorder takes a long tensor of {self.batch} row indices, got {rows!r:.60}")
        self._gather_rows(rows, self, "reorder's")

    def take_rows(self, rows: Tensor) -> KVCache:
        """A new cache whose row i is this cache's row rows[i], any number of rows: (b ...) -> (r ...).
        Beam search copies a prompt's row to its beams; contrastive search copies each row to its
        candidates, then keeps the chosen candidate's row."""
        if not isinstance(rows, Tensor) or rows.dim() != 1 or len(rows) == 0:
            raise ValueError(f"take_rows takes a non-empty 1-D long tensor of row indices, got {rows!r:.60}")
        n_layer, _, n_head, max_length, head_dim = self.keys.shape
        taken = KVCache(n_layer, len(rows), n_head, head_dim, max_length, device=self.keys.device, dtype=self.keys.dtype)
        self._gather_rows(rows, taken, "take_rows'")
        return taken

    def _gather_rows(self, rows: Tensor, into: KVCache, caller: str) -> None:
        """into's row i := this cache's row rows[i], over the filled positions."""
        if rows.dtype != torch.long:
            raise ValueError(f"{caller} row indices must be a long tensor, got dtype {rows.dtype}")
        if bool(((rows < 0) | (rows >= self.batch)).any()):
            raise ValueError(f"{caller} row indices must be in [0, {self.batch})")
        n = self.length
        into.keys[:, :, :, :n] = self.keys[:, rows, :, :n]  # gathered first, so into may be self
        into.values[:, :, :, :n] = self.values[:, rows, :, :n]
        into.mask[:, :n] = self.mask[rows, :n]
        into.length = n
