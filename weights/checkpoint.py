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
from torch import Tensor, nn

from minigpt.block import gpt2_block
from minigpt.checks import check_device, check_dtype, check_fits_in_memory, few
from minigpt.config import END_OF_TEXT_ID, GPTConfig
from minigpt.files import write_atomically, write_text_atomically
from minigpt.model import GPT
from minigpt.tokenizer import Tokenizer

from .locate import ALIASES, checkpoint_root, find_cached, locate
from .names import check_public, ours_to_public, public_to_ours, wanted
from .safetensors_io import SINGLE_FILE, confined, list_tensors, read_tensors, write_file


GPT2_VOCABULARY = END_OF_TEXT_ID + 1


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
    Everything is checked before the weights are read: the arguments, the config, and the
    checkpoint's tensor names, dtypes and shapes against the config.
    """
    dtype = check_dtype(torch.float32 if dtype is None else dtype)
    device = check_device("cpu" if device is None else device)
    if not callable(make_block):
        raise ValueError(f"make_block must be a function GPTConfig -> block, got {type(make_block).__name__}")
    directory = locate(source)
    root = checkpoint_root(directory)
    config = read_config(directory, root)
    listing, where = list_tensors(directory, root)
    check_public(listing, config, where)
    check_fits_in_memory(config.parameter_count * dtype.itemsize, f"{where} ({config.parameter_count:,} parameters)")
    tensors = convert(read_tensors(wanted(listing)), dtype, where)
    state = public_to_ours(tensors, config, where)
    with torch.device("meta"):  # no time spent on a random initialisation we would overwrite
        model = GPT(config, make_block)
    _check_same_parameters(model, state)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()


def load_tokenizer(source: str | os.PathLike) -> Tokenizer:
    """A checkpoint's own tokenizer (vocab.json and merges.txt beside its weights, as the hub's GPT-2
    checkpoints and `scripts/train.py` write them), or GPT-2's for a checkpoint of GPT-2's
    vocabulary size that carries none. A public GPT-2 name ("gpt2", ..., "distilgpt2") not in the
    Hugging Face cache is GPT-2's BPE, which ships with the install: nothing to download."""
    if isinstance(source, str) and source in {*ALIASES, *ALIASES.values()} and find_cached(source) is None:
        return Tokenizer.gpt2()
    directory = locate(source)
    root = checkpoint_root(directory)
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if vocab.exists() or merges.exists():
        return Tokenizer.from_files(confined(vocab, root, "vocab.json"), confined(merges, root, "merges.txt"))
    config = read_config(directory, root)
    if config.vocab_size != GPT2_VOCABULARY:
        raise ValueError(f"{directory} has no vocab.json and merges.txt, and its vocabulary of {config.vocab_size} "
                         f"tokens is not GPT-2's ({GPT2_VOCABULARY}): which tokenizer it needs is unknown")
    return Tokenizer.gpt2()


def read_config(directory: Path, root: Path) -> GPTConfig:
    """The checkpoint's config.json, which must lie inside its root like every file it reads."""
    return GPTConfig.from_json(confined(directory / "config.json", root, "config.json"))


def convert(tensors: dict[str, Tensor], dtype: torch.dtype, where: str) -> dict[str, Tensor]:
    """Each tensor in `dtype`, checked after the conversion: a weight finite on disk can overflow
    a narrower type (float32 above 65504 becomes inf in float16), and one inf makes every logit NaN."""
    converted = {}
    for name, stored in tensors.items():
        value = stored.to(dtype)
        if not bool(torch.isfinite(value).all()):
            if bool(torch.isfinite(stored).all()):
                largest = float(stored.abs().max())
                raise ValueError(f"checkpoint {where}: tensor {name} overflows {dtype}: its largest |value| "
                                 f"{largest:.4g} exceeds {torch.finfo(dtype).max:.4g}; load it in a wider dtype")
            raise ValueError(f"checkpoint {where}: tensor {name} holds NaN or inf")
        converted[name] = value
    return converted


def _check_same_parameters(model: GPT, state: dict[str, Tensor]) -> None:
    """A block built by a custom make_block must hold GPT-2's parameters, under the same names and
    shapes, for the weights to load into it."""
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing, extra = set(ours) - set(state), set(state) - set(ours)
    misshapen = [f"{k}: the model has {list(ours[k])}, the checkpoint {list(state[k].shape)}"
                 for k in set(ours) & set(state) if ours[k] != tuple(state[k].shape)]
    if missing or extra or misshapen:
        raise ValueError(f"the model built by make_block does not hold GPT-2's parameters: model only: {few(missing)}; "
                         f"checkpoint only: {few(extra)}; {'; '.join(misshapen[:3]) or 'no shape differs'}")


def save_gpt2(model: GPT, directory: str | os.PathLike, *, eos_token_id: int | None = None,
              overwrite: bool = False) -> Path:
    """Write config.json and model.safetensors in the hub's public layout; load_gpt2 reads it back
    bit-exactly. eos_token_id goes into config.json (default: GPT-2's, if the vocabulary has it).
    An existing checkpoint in `directory` is replaced only with overwrite=True."""
    if not isinstance(model, GPT):
        raise ValueError(f"save_gpt2 saves a minigpt GPT, got {type(model).__name__}")
    if not isinstance(directory, (str, os.PathLike)) or str(directory) == "":
        raise ValueError(f"save_gpt2 needs a directory path, got {directory!r}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"cannot save into {directory}: it exists and is not a directory")
    written = [directory / name for name in ("config.json", SINGLE_FILE)]
    if not overwrite and any(path.exists() for path in written):
        raise ValueError(f"{directory} already holds a checkpoint; pass overwrite=True to replace it")
    config = model.config
    pruned = [i for i, block in enumerate(model.blocks) if getattr(getattr(block, "attn", None), "n_head", config.n_head)
              != config.n_head]
    if pruned:  # the public layout has one head count for every layer
        raise ValueError(f"cannot save a model with pruned heads (layers {pruned}) in the public GPT-2 layout, "
                         "which gives every layer n_head heads; save the unpruned model and prune after loading")
    public = ours_to_public(model.state_dict(), config)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # each file replaced whole: a failed or interrupted save leaves the old checkpoint readable
        write_text_atomically(written[0], json.dumps(config.to_hf_dict(eos_token_id), indent=2) + "\n")
        write_atomically(written[1], lambda partial: write_file(public, partial))
    except OSError as err:
        raise ValueError(f"cannot write the checkpoint into {directory}: {err.strerror or err}") from None
    return directory
