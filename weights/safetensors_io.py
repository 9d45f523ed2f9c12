"""Reading and writing safetensors files, single or sharded, with errors that name the file.

safetensors stores raw tensors behind a JSON header: nothing is unpickled, so a file from anywhere
is safe to open. Reading is in two steps: `list_tensors` reads only the headers (each tensor's
name, dtype and shape), so a checkpoint that does not fit its config is refused before a byte of
weights is read; then `read_tensors` reads the ones wanted.

A checkpoint reads only its own directory (its `root`): a shard name, or a symbolic link, that
resolves outside it is refused, so a checkpoint cannot make the loader read other files.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from minigpt.checks import check_readable, few

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}  # safetensors' names


@dataclass(frozen=True)
class StoredTensor:
    file: Path
    dtype: str  # safetensors' name: "F32", "BF16", "I64", ...
    shape: tuple[int, ...]


def confined(path: Path, root: Path, entry: str) -> Path:
    """`path`, after following links, if it lies inside `root`; otherwise a ValueError naming `entry`."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"{entry} points outside the checkpoint {root} (to {resolved}); refusing to read it")
    return resolved


def list_tensors(directory: Path, root: Path) -> tuple[dict[str, StoredTensor], str]:
    """Every tensor of a checkpoint (`model.safetensors` or a sharded index), from the headers only.
    Returns them and a description of where they came from, for error messages."""
    single, index = directory / SINGLE_FILE, directory / SHARD_INDEX
    if single.exists() or single.is_symlink():
        return _header(confined(single, root, SINGLE_FILE)), str(single)
    if index.exists() or index.is_symlink():
        return _sharded_headers(confined(index, root, SHARD_INDEX), root), str(index)
    raise ValueError(f"no {SINGLE_FILE} or {SHARD_INDEX} in {directory} (only safetensors weights are read)")


@contextmanager
def _opened(path: Path) -> Iterator:
    """safe_open(path); a truncated or corrupt file, met while opening or reading, is a ValueError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {_first_line(err)}") from None


def _header(path: Path) -> dict[str, StoredTensor]:
    check_readable(path, "weights file")
    with _opened(path) as f:
        slices = {key: f.get_slice(key) for key in f.keys()}  # a slice reads its header entry, not the data
        return {key: StoredTensor(path, part.get_dtype(), tuple(part.get_shape())) for key, part in slices.items()}


def _sharded_headers(index: Path, root: Path) -> dict[str, StoredTensor]:
    check_readable(index, "shard index")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{index} is not a shard index with a 'weight_map': {_first_line(err)}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index}: 'weight_map' must map tensor names to shard file names")
    listing: dict[str, StoredTensor] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).is_absolute():
            raise ValueError(f"{index.name} entry {shard!r} is an absolute path; shards must lie beside the index")
        found = _header(confined(index.parent / shard, root, f"{index.name} entry {shard!r}"))
        claimed = {key for key, name in weight_map.items() if name == shard}
        if set(found) != claimed:
            raise ValueError(
                f"{shard} does not hold what {index.name} says: missing {few(claimed - set(found))}, "
                f"extra {few(set(found) - claimed)}"
            )
        listing |= found
    return listing


def read_tensors(listing: dict[str, StoredTensor]) -> dict[str, Tensor]:
    """The listed tensors, read file by file."""
    by_file: dict[Path, list[str]] = {}
    for name, stored in listing.items():
        by_file.setdefault(stored.file, []).append(name)
    tensors = {}
    for path, names in by_file.items():
        with _opened(path) as f:
            # clone: get_tensor's memory is a read buffer at an arbitrary offset; torch's own
            # allocations are 64-byte aligned, and CPU BLAS picks its kernels (and so its
            # rounding) by alignment, so without this the same weights could give logits
            # differing in the last bit depending on which file they came from
            tensors |= {name: f.get_tensor(name).clone() for name in names}
    return tensors


def write_file(tensors: dict[str, Tensor], path: Path) -> None:
    # "format": "pt" is the metadata transformers checks before loading a safetensors file
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__

