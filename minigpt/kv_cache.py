"""A key/value cache, preallocated once per generation and written at slots held in a tensor.

Decoding one token at a time recomputes nothing: each layer's keys and values for the positions
already seen are kept here, and a step only computes the new position's. The cache is the one
owner of "where does this step go": `append` claims the next slots for the new positions and
records which of them are real tokens (so a left-padded batch decodes without the caller carrying
its mask along); each layer then writes its keys and values at those slots (`writer`).

Everything a step reads or writes has the same shape every step, and the count of filled slots
(`end`) is a tensor on the cache's device: a decoding step never reads a number back to the host,
so it can be compiled as one graph (and captured as a CUDA graph). Attention runs over all s
slots; the slots not yet written are simply not real, so no query sees them.

Layout: keys and values, one (b h s d) tensor per layer (h: the key/value heads, fewer than the
query heads under grouped-query attention) (separate tensors, not slices of one: a
compiled step then writes each in place, where slices of one tensor it would copy whole every
step); real (b s); l layers, s = max_length slots. Passed in explicitly: `model(ids, cache=cache)`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import Tensor

from .checks import ContractError, check_device, check_dtype, check_fits_in_memory, check_int


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
        check_fits_in_memory(self.bytes_needed(shape, dtype), f"a KV cache of {batch} rows x {max_length} positions",
                             device)
        self.keys = [torch.zeros(shape[1:], device=device, dtype=dtype) for _ in range(n_layer)]  # l of (b h s d)
        self.values = [torch.zeros(shape[1:], device=device, dtype=dtype) for _ in range(n_layer)]
        self.real = torch.zeros(batch, max_length, device=device, dtype=torch.bool)  # True: a real token was written there
        self.end = torch.zeros((), device=device, dtype=torch.long)  # slots filled so far, kept on the device

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch: int, max_length: int) -> KVCache:
        """A cache shaped for `model`, on its device and in its dtype."""
        config = model.config
        check_int("max_length", max_length, 1, config.n_positions)  # more positions than the model has embeddings for
        return cls(config.n_layer, batch, config.kv_heads, config.head_dim, max_length, device=model.device,
                   dtype=model.dtype)

    @staticmethod
    def bytes_needed(shape: tuple[int, ...], dtype: torch.dtype) -> int:
        """What a cache of keys and values shaped (l b h s d) allocates: both, and the mask (b s)."""
        n_layer, batch, n_head, max_length, head_dim = shape
        return 2 * math.prod(shape) * dtype.itemsize + batch * max_length

    @staticmethod
    def bytes_for(model: torch.nn.Module, batch: int, max_length: int) -> int:
        """What `for_model(model, batch, max_length)` would allocate, without allocating it."""
        config = model.config
        return KVCache.bytes_needed((config.n_layer, batch, config.kv_heads, max_length, config.head_dim), model.dtype)

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """(l b h s d): layers, rows, heads, slots, head width."""
        return (len(self.keys), *self.keys[0].shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    @property
    def batch(self) -> int:
        return self.shape[1]

    @property
    def max_length(self) -> int:
        return self.shape[3]

    @property
    def length(self) -> int:
        """Slots filled so far. Reads `end` back to the host: for checks, never inside a decoding step."""
        return int(self.end)

    @property
    def nbytes(self) -> int:
        """Memory held by the preallocated keys, values and mask."""
        return sum(t.element_size() * t.nelement() for t in (*self.keys, *self.values, self.real))

    def append(self, new_real: Tensor) -> tuple[Tensor, Tensor]:
        """Claim the next t slots for t new positions; new_real (b t) says which hold real tokens.
        Returns every slot's mask (b s), the new ones included, and the claimed slots (t)."""
        slots = self.end + torch.arange(new_real.shape[1], device=self.end.device)  # (t)
        self.real.index_copy_(1, slots, new_real)
        self.end += new_real.shape[1]
        return self.real, slots

    def writer(self, layer: int, slots: Tensor) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """The function layer `layer` calls with its new keys and values (b h t d): it writes them at
        `slots` (from `append`) and returns that layer's keys and values at every slot (b h s d)."""
        return partial(self._write, layer, slots)

    def _write(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        keys, values = self.keys[layer], self.values[layer]  # (b h s d)
        check_written(keys, slots, k, v)
        if k.shape[1] < keys.shape[1]:  # a layer with pruned heads computes fewer than n_head: the first h slots
            keys, values = keys[:, : k.shape[1]], values[:, : k.shape[1]]
        keys.index_copy_(2, slots, k)
        values.index_copy_(2, slots, v)
        return keys, values

    def keep(self, start: int, kept: Tensor) -> None:
        """Roll back what was written from slot `start` on: row i keeps its first kept[i] of those
        slots and the rest become holes (not real, so attention skips them and positions do not
        count them: a row's logits are those it gets without them); the cache then ends at
        start + max(kept). Speculative decoding keeps the proposals each row accepted."""
        check_int("keep's start", start, 0, self.length)
        if not isinstance(kept, Tensor) or kept.shape != (self.batch,) or kept.dtype != torch.long:
            raise ValueError(f"keep takes a long tensor of {self.batch} counts, one a row, got {kept!r:.60}")
        if bool(((kept < 0) | (kept > self.length - start)).any()):
            raise ValueError(f"keep's counts must be in [0, {self.length - start}] (the slots written from slot "
                             f"{start} on), got {kept.tolist()}")
        slots = torch.arange(self.max_length, device=self.real.device)  # (s)
        self.real &= slots < start + kept[:, None]  # (b s): every slot before start, and the kept ones
        self.end.fill_(start + int(kept.max()))

    def compact(self) -> None:
        """Squeeze out the holes: each row's real slots moved, in order, to the end of the first w
        slots (w: the most real slots of any row; rows with fewer start with padding), as a
        left-padded prefill of the same tokens would have written them."""
        filled = self.length
        real = self.real[:, :filled]  # (b s)
        count = real.sum(dim=1, keepdim=True)  # (b 1)
        width = int(count.max())
        in_order = torch.sort((~real).int(), dim=1, stable=True).indices  # (b s): each row's real slots first
        at = torch.arange(width, device=real.device)[None, :] - (width - count)  # (b w): which real slot goes there
        source = in_order.gather(1, at.clamp(min=0))  # (b w); padding takes any slot, masked below
        for tensor in self.keys + self.values:  # (b h s d)
            b, h, _, d = tensor.shape
            tensor[:, :, :width] = tensor.gather(2, source[:, None, :, None].expand(b, h, width, d))
        self.real.zero_()
        self.real[:, :width] = at >= 0
        self.end.fill_(width)

    def reorder(self, rows: Tensor) -> None:
        """Row i becomes old row rows[i] (beam search keeps the beams it chose)."""
        if not isinstance(rows, Tensor) or rows.shape != (self.batch,):
            raise ValueError(f"reorder takes a long tensor of {self.batch} row indices, got {rows!r:.60}")
        self._gather_rows(rows, self, "reorder's")

    def take_rows(self, rows: Tensor) -> KVCache:
        """A new cache whose row i is this cache's row rows[i], any number of rows: (b ...) -> (len(rows) ...).
        Beam search copies a prompt's row to its beams; contrastive search copies each row to its
        candidates, then keeps the chosen candidate's row."""
        if not isinstance(rows, Tensor) or rows.dim() != 1 or len(rows) == 0:
            raise ValueError(f"take_rows takes a non-empty 1-D long tensor of row indices, got {rows!r:.60}")
        n_layer, _, n_head, max_length, head_dim = self.shape
        taken = KVCache(n_layer, len(rows), n_head, head_dim, max_length, device=self.device, dtype=self.dtype)
        self._gather_rows(rows, taken, "take_rows'")
        return taken

    def _gather_rows(self, rows: Tensor, into: KVCache, caller: str) -> None:
        """into's row i := this cache's row rows[i], every slot."""
        if rows.dtype != torch.long:
            raise ValueError(f"{caller} row indices must be a long tensor, got dtype {rows.dtype}")
        if bool(((rows < 0) | (rows >= self.batch)).any()):
            raise ValueError(f"{caller} row indices must be in [0, {self.batch})")
        for mine, theirs in zip(self.keys + self.values, into.keys + into.values):
            theirs.copy_(mine[rows])  # gathered first, so into may be self
        into.real.copy_(self.real[rows])
        into.end.copy_(self.end)


def check_written(keys: Tensor, slots: Tensor, k: Tensor, v: Tensor) -> None:
    """What an attention hands `kv(k, v)`: this call's keys and values, each (b h t d) with the
    cache's rows, at most its heads (fewer where heads were pruned), its head width and dtype.
    Shapes only: nothing is read back from the device."""
    b, heads, _, d = keys.shape
    want = f"(b h t d) = ({b}, {heads}, {len(slots)}, {d})"
    for name, x in (("k", k), ("v", v)):
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] != b or not 1 <= x.shape[1] <= heads \
                or x.shape[2] != len(slots) or x.shape[3] != d:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ContractError(
                f"kv(k, v) takes this call's keys and values shaped {want}: h = the model's n_head heads "
                f"(n_kv_head under grouped-query attention), d = n_embd / n_head = {d}; got {name} {got} "
                "(README 'Swapping a component')")
    if k.shape != v.shape or k.dtype != keys.dtype or v.dtype != keys.dtype:
        raise ContractError(f"kv(k, v) takes k and v of one shape in the cache's dtype {keys.dtype}; got k "
                            f"{tuple(k.shape)} {k.dtype} and v {tuple(v.shape)} {v.dtype} (README 'Swapping a component')")
