"""The model's checked boundary: what every public call of `GPT` checks, once, before the bare
forward pass runs. The computation itself (model.py, block.py, attention.py, mlp.py) checks nothing.

Each check names the argument, what it must be and what it got, so a bad input is one ValueError
here and never an error from deep inside torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .checks import ContractError, check_finite_tensor, check_fits_in_memory, check_mask, check_token_ids
from .config import GPTConfig
from .kv_cache import KVCache

if TYPE_CHECKING:
    from .model import GPT


def check_construction(config: object, make_block: object, make_positions: object) -> None:
    """GPT(config, make_block, make_positions): the arguments, and that the parameters fit in memory."""
    if not isinstance(config, GPTConfig):
        raise ValueError(f"GPT needs a GPTConfig, got {type(config).__name__}")
    for name, value, makes in (("make_block", make_block, "block"), ("make_positions", make_positions, "module")):
        if not callable(value):
            raise ValueError(f"{name} must be a function GPTConfig -> {makes}, got {type(value).__name__}")
    default = torch.get_default_device()
    if default.type != "meta":  # on meta nothing is allocated: a loader builds there first
        check_fits_in_memory(config.parameter_count * torch.get_default_dtype().itemsize,
                             f"GPT({config.parameter_count:,} parameters)", default)


def check_output(what: str, x: Tensor, out: object) -> Tensor:
    """A piece passed in (a block: `make_block`; a block's attention or MLP) returns the residual
    stream's shape, (b t e): one tensor of x's shape. Shapes only (under autocast a sublayer's dtype
    differs from the stream's, rightly), so it costs nothing beside the piece."""
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ContractError(f"{what} must return the residual stream's shape (b t e) = {tuple(x.shape)}, as it came "
                            f"in; got {got} (README 'Swapping a component')")
    return out


def check_inputs(model: GPT, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None,
                 head_mask: Tensor | None = None, only_last: bool = False) -> Tensor:
    """The arguments of `GPT.forward`. Returns which of the new positions hold real tokens (b t) bool."""
    config = model.config
    check_token_ids(input_ids, config.vocab_size)
    if input_ids.device != model.device:
        raise ValueError(f"input_ids is on {input_ids.device} but the model is on {model.device}; move one of them")
    if not isinstance(only_last, bool):
        raise ValueError(f"only_last must be True or False, got {only_last!r:.40}")
    b, t = input_ids.shape
    if cache is not None:
        check_cache(model, cache, b)
    past = cache.length if cache is not None else 0
    if past + t > config.n_positions:
        raise ValueError(f"{past + t} positions ({past} cached + {t} new) exceed the model's context of "
                         f"n_positions={config.n_positions}")
    if cache is not None and past + t > cache.max_length:
        raise ValueError(f"KVCache is full: it holds {past} of max_length={cache.max_length} positions "
                         f"and cannot take {t} more")
    if head_mask is not None:  # one gate per head, or one per row and head (per-example importance)
        shape = (b, config.n_layer, config.n_head) if isinstance(head_mask, Tensor) and head_mask.dim() == 3 else (
            config.n_layer, config.n_head)
        check_finite_tensor("head_mask", head_mask, shape)
    if attention_mask is None:  # every new token is real; with a cache, the cached padding stays as it was
        return torch.ones(b, t, dtype=torch.bool, device=input_ids.device)
    real = check_mask("attention_mask", attention_mask, (b, past + t)).to(input_ids.device)
    if past and not torch.equal(real[:, :past], cache.real[:, :past].to(real.device)):
        raise ValueError(f"attention_mask's first {past} columns contradict the padding the cache already holds")
    return real[:, past:]


def check_cache(model: GPT, cache: object, batch: int) -> None:
    """A KVCache made for this model (`model.new_cache`): its shape, dtype and device."""
    if not isinstance(cache, KVCache):
        raise ValueError(f"cache must be a KVCache (model.new_cache(batch, max_length)), got {type(cache).__name__}")
    config = model.config
    n_layer, rows, n_head, _, head_dim = cache.shape
    if (n_layer, n_head, head_dim) != (config.n_layer, config.kv_heads, config.head_dim):
        raise ValueError(f"the cache was made for another model: {n_layer} layers x {n_head} heads x {head_dim} "
                         f"wide, this one has {config.n_layer} x {config.kv_heads} x {config.head_dim}; "
                         "use model.new_cache(batch, max_length)")
    if cache.dtype != model.dtype or cache.device != model.device:
        raise ValueError(f"the cache holds {cache.dtype} on {cache.device}, the model computes "
                         f"{model.dtype} on {model.device}; use model.new_cache(batch, max_length)")
    if rows != batch:
        raise ValueError(f"the cache holds {rows} rows but input_ids has {batch}")
