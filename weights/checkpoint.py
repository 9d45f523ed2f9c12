"""`load_gpt2` and `save_gpt2`: a GPT from a checkpoint directory or hub name, and back.

Mirrors what `GPT2LMHeadModel.from_pretrained` reads and what the hub serves, with the name
mapping in `names.py` and the file handling in `safetensors_io.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from minigpt.block import gpt2_block
from minigpt.config import GPTConfig
from minigpt.model import GPT

from .locate import locate
from .names import ours_to_public, public_to_ours
from .safetensors_io import SINGLE_FILE, first_non_finite, read_checkpoint, write_file


def load_gpt2(
    source: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    make_block: Callable[[GPTConfig], nn.Module] = gpt2_block,
) -> GPT:
    """A GPT in eval mode, from a directory or a hub name ('gpt2', 'openai-community/gpt2-medium').

    dtype: float32 unless asked (the public weights are float32). make_block: build the blocks
    differently (another attention kernel, say) and load the same weights into them.
    """
    directory = locate(source)
    config = GPTConfig.from_json(directory / "config.json")
    tensors, where = read_checkpoint(directory)
    state = public_to_ours(tensors, config, where)
    bad = first_non_finite(state)
    if bad is not None:
        raise ValueError(f"checkpoint {where}: tensor for {bad} holds NaN or inf")
    with torch.device("meta"):  # no time spent on a random initialisation we would overwrite
        model = GPT(config, make_block)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def save_gpt2(model: GPT, directory: str | os.PathLike) -> Path:
    """Write config.json and model.safetensors in the hub's public layout; load_gpt2 reads it back bit-exactly."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    (directory / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n", encoding="utf-8")
    write_file(ours_to_public(model.state_dict(), config.n_layer, config.n_positions), directory / SINGLE_FILE)
    return directory
