"""Reading and writing safetensors files, single or sharded, with errors that name the file.

safetensors stores raw tensors behind a JSON header: nothing is unpickled, so a file from anywhere
is safe to open.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


def read_file(path: Path) -> dict[str, Tensor]:
    """Every tensor of one .safetensors file; a truncated or corrupt file is a ValueError."""
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            # clone: get_tensor's memory is a read buffer at an arbitrary offset; torch's own
            # allocations are 64-byte aligned, and CPU BLAS picks its kernels (and so its rounding)
            # by alignment, so without this the same weights could give logits differing in the
            # last bit depending on which file they came from
            return {key: f.get_tensor(key).clone() for key in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None


def read_checkpoint(directory: Path) -> tuple[dict[str, Tensor], str]:
    """All tensors of a checkpoint directory, from `model.safetensors` or a sharded index.
    Returns the tensors and a description of where they came from, for error messages."""
    single, index = directory / SINGLE_FILE, directory / SHARD_INDEX
    if single.is_file():
        return read_file(single), str(single)
    if index.is_file():
        return _read_sharded(index), str(index)
    raise ValueError(f"no {SINGLE_FILE} or {SHARD_INDEX} in {directory} (only safetensors weights are read)")


def _read_sharded(index: Path) -> dict[str, Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{index} is not a shard index with a 'weight_map': {err!r}") from None
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        found = read_file(path)
        claimed = {key for key, name in weight_map.items() if name == shard}
        if set(found) != claimed:
            raise ValueError(
                f"{path} does not hold what {index.name} says: missing {sorted(claimed - set(found))}, "
                f"extra {sorted(set(found) - claimed)}"
            )
        tensors |= found
    return tensors


def write_file(tensors: dict[str, Tensor], path: Path) -> None:
    # "format": "pt" is the metadata transformers checks before loading a safetensors file
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def first_non_finite(tensors: dict[str, Tensor]) -> str | None:
    """The first key whose tensor holds NaN or inf, or None."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None
