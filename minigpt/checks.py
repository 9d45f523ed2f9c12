"""Argument checks shared by the model, the cache, the decoders, the tokenizer and the loader.

Every public entry point checks what it is given before any tensor is touched, so a bad input
is one ValueError that names the argument, what it must be, and what it got, never an error from
deep inside torch or a silently coerced value. Types are checked, not coerced: `True` is not the
integer 1 here, and 2.5 is not 2.
"""

from __future__ import annotations

import math
import os
import stat
from numbers import Integral, Real
from pathlib import Path

import torch
from torch import Tensor


class ContractError(ValueError):
    """A piece passed in (a block, an attention, a kernel) broke a contract where it meets
    minigpt's own code: the message names the contract, what it expects and what it got."""


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """An int (not a bool, not a float that happens to be whole) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {_show(value)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in {_interval(low, high)}, got {value}")
    return value


def check_float(name: str, value: object, low: float | None = None, high: float | None = None,
                *, open_low: bool = False, open_high: bool = False) -> float:
    """A finite real number (not a bool, not a string) in [low, high]; open_low / open_high
    leave out that end."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {_show(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    below = low is not None and (value <= low if open_low else value < low)
    above = high is not None and (value >= high if open_high else value > high)
    if below or above:
        raise ValueError(f"{name} must be in {_interval(low, high, open_low, open_high)}, got {value:g}")
    return value


def check_token_id(name: str, value: object, vocab_size: int) -> int:
    return check_int(name, value, 0, vocab_size - 1)


def check_token_ids(input_ids: Tensor, vocab_size: int, name: str = "input_ids") -> None:
    """A non-empty (batch, time) tensor of integer ids, every one of which indexes the embedding."""
    if not isinstance(input_ids, Tensor):
        raise ValueError(f"{name} must be a (batch, time) tensor of token ids, got {_show(input_ids)}")
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must be a (batch, time) tensor, got shape {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32):  # what an embedding lookup takes
        raise ValueError(f"{name} must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(input_ids.shape)}): give at least one token per row")
    if input_ids.device.type == "meta":
        raise ValueError(f"{name} is on the meta device, which holds shapes but no values; give real token ids")
    low, high = (int(x) for x in torch.aminmax(input_ids))
    if low < 0 or high >= vocab_size:
        raise ValueError(f"token id {low if low < 0 else high} is outside the vocabulary [0, {vocab_size}) (in {name})")


def check_mask(name: str, mask: object, shape: tuple[int, ...]) -> Tensor:
    """A 0/1 mask tensor of the given shape, with at least one 1 per row; returned as bool.

    Any dtype is accepted as long as every value is exactly 0 or 1: a mask of 0.4 or 2 means
    nothing, and `.bool()` would quietly read both as 1.
    """
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a tensor of 0s and 1s with shape {shape}, got {_show(mask)}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        odd = mask[(mask != 0) & (mask != 1)].flatten()[:1].tolist()
        raise ValueError(f"{name} must hold only 0 and 1, got {f'{odd[0]:g}' if odd else mask.dtype}")
    mask = mask.bool()
    empty = (~mask.flatten(1).any(dim=1)).nonzero().flatten().tolist() if mask.dim() > 1 else []
    if empty:
        raise ValueError(f"row {empty[0]} of {name} has no real token (all zeros): every row needs at least one")
    return mask


def real_tokens(input_ids: Tensor, attention_mask: object) -> Tensor:
    """(b t) bool: which positions hold real tokens: the checked attention_mask, or all of them
    when there is none. input_ids must already be checked to be a (batch, time) tensor."""
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    return check_mask("attention_mask", attention_mask, tuple(input_ids.shape)).to(input_ids.device)


def check_finite_tensor(name: str, value: object, shape: tuple[int, ...]) -> Tensor:
    """A floating-point tensor of the given shape with no NaN or inf."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a tensor of shape {shape}, got {_show(value)}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} holds NaN or inf")
    return value


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {_show(value)}")
    return value


def check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES)
        raise ValueError(f"dtype must be one of torch's {names}, got {dtype!r}")
    return dtype


def check_device(device: object) -> torch.device:
    """A device that exists on this machine: 'banana' and 'cuda' without a GPU are refused here,
    not when the first tensor is moved."""
    if isinstance(device, torch.device):
        parsed = device
    elif isinstance(device, str):
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device {device!r} is not a device name (try 'cpu' or 'cuda')") from None
    else:
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {_show(device)}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(parsed)!r}: CUDA is not available on this machine (use 'cpu')")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(parsed)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type not in ("cpu", "meta"):
        raise ValueError(f"device {str(parsed)!r} is not supported here (use 'cpu' or 'cuda')")
    return parsed


def check_fits_in_memory(nbytes: int, what: str, device: torch.device | str | None = None) -> None:
    """Refuse an allocation that cannot fit before making it: an absurd size is an error that
    names it, not a minute of swapping followed by the kernel killing the process."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[1]
    elif device.type == "cpu":
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        return
    if nbytes > available:
        raise ValueError(f"{what} needs {_size(nbytes)}, more than this machine's {_size(available)} of {device.type} memory")


def check_readable(path: Path, what: str) -> Path:
    """Say which of 'not there', 'not a file' and 'not readable' is wrong, before a library reports
    all three as one vague error."""
    try:
        if path.exists() and not path.is_dir() and not stat.S_ISREG(path.stat().st_mode):
            # opening a named pipe for reading waits for a writer: it would hang, not fail
            raise ValueError(f"{what} {path} is not a regular file (a named pipe, socket or device?)")
        with path.open("rb"):
            return path
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise ValueError(f"{what} {path} exists but cannot be read: permission denied") from None
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be read: {err.strerror or err}") from None


def few(names: set[str] | list[str], most: int = 6) -> str:
    """A list of names short enough for one line of an error message."""
    names = sorted(names)
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "") if names else "none"


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.3g} MiB"


def _show(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _interval(low: float | None, high: float | None, open_low: bool = False, open_high: bool = False) -> str:
    left = "(" if open_low or low is None else "["
    right = ")" if open_high or high is None else "]"
    return f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
