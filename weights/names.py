"""The one table between the public GPT-2 checkpoint names and ours.

The public file (OpenAI's weights as converted for the hub) stores the attention and MLP
projections as Conv1D weights of shape [in, out]; nn.Linear keeps [out, in], so those are
transposed on the way in and back on the way out. Everything else is copied as it is.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
from torch import Tensor

from minigpt.checks import few
from minigpt.config import GPTConfig

from .safetensors_io import FLOAT_DTYPES, StoredTensor

# Conv1D stores [in, out]; nn.Linear wants [out, in]: these are transposed on the way in and out
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Stored in some files but not weights: the causal-mask buffers of old GPT2Attention (we build
# the mask from positions) and the output head, which GPT-2 ties to wte.
MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
NOT_WEIGHTS = re.compile(rf"{MASK_BUFFER.pattern}|lm_head\.weight")
BLOCK_INDEX = re.compile(r"h\.(\d+)\.")
# transformers' save_pretrained nests the model under this prefix; the hub's original files do not
TRANSFORMERS_PREFIX = "transformer."


class Entry(NamedTuple):
    ours: str
    public: str
    shape: tuple[int, ...]  # as the public file stores it
    conv1d: bool  # stored [in, out]: transposed between the file and the model


def layout(config: GPTConfig) -> list[Entry]:
    """Every weight of a GPT-2 of this config. Our names are the public ones, but for the list of
    blocks: ours `blocks.{i}`, the file's `h.{i}`."""
    e, m, d = config.n_embd, config.mlp_width, config.head_dim  # model width, MLP width, head width
    qkv = (config.n_head + 2 * config.kv_heads) * d  # fewer key/value heads under grouped-query attention
    fc = 2 * m if config.mlp == "swiglu" else m  # SwiGLU's gate and value

    def norm(name: str, width: int = e) -> dict[str, tuple[int, ...]]:  # RMSNorm has no bias
        return {f"{name}.weight": (width,)} | ({f"{name}.bias": (width,)} if config.norm == "layernorm" else {})

    whole = {"wte.weight": (config.vocab_size, e)}
    whole |= {"wpe.weight": (config.n_positions, e)} if config.position == "learned" else {}
    whole |= norm("ln_f")
    in_block = {
        **norm("ln_1"),
        "attn.c_attn.weight": (e, qkv), "attn.c_attn.bias": (qkv,),
        **(norm("attn.q_norm", d) | norm("attn.k_norm", d) if config.qk_norm else {}),
        "attn.c_proj.weight": (e, e), "attn.c_proj.bias": (e,),
        **norm("ln_2"),
        "mlp.c_fc.weight": (e, fc), "mlp.c_fc.bias": (fc,),
        "mlp.c_proj.weight": (m, e), "mlp.c_proj.bias": (e,),
    }
    entries = [Entry(name, name, shape, False) for name, shape in whole.items()]
    return entries + [Entry(f"blocks.{i}.{name}", f"h.{i}.{name}", shape, name in CONV1D)
                      for i in range(config.n_layer) for name, shape in in_block.items()]


def check_public(listing: dict[str, StoredTensor], config: GPTConfig, where: str) -> None:
    """Compare a checkpoint's headers (names, dtypes, shapes) with its config, before any weight is
    read. Every problem is named in one ValueError of a few lines."""
    names = {_unprefixed(name) for name in listing}
    blocks = {int(m.group(1)) for name in names if (m := BLOCK_INDEX.match(name))}
    # checked first, by count and ends (0 and n_layer - 1 with none missing between): n_layer=10**8 must
    # build neither a 1.2-billion-row table nor a set of 10**8 numbers
    if len(blocks) != config.n_layer or (blocks and (min(blocks), max(blocks)) != (0, config.n_layer - 1)):
        held = f"blocks h.0 to h.{max(blocks)} ({len(blocks)})" if blocks else "no blocks"
        raise ValueError(f"checkpoint {where}: its config says n_layer={config.n_layer}, but it holds {held}")
    stored = {_unprefixed(name): value for name, value in listing.items()}
    expected = {entry.public: entry.shape for entry in layout(config)}
    missing = set(expected) - set(stored)
    unexpected = {k for k in stored if k not in expected and not NOT_WEIGHTS.fullmatch(k)}
    misshapen = [f"{k}: expected {list(shape)}, found {list(stored[k].shape)}"
                 for k, shape in expected.items() if k in stored and stored[k].shape != shape]
    not_float = [f"{k} is {stored[k].dtype}" for k in expected if k in stored and stored[k].dtype not in FLOAT_DTYPES]
    if "lm_head.weight" in stored and "wte.weight" in stored and stored["lm_head.weight"].shape != stored["wte.weight"].shape:
        misshapen.append("lm_head.weight: differs from wte.weight, but GPT-2 ties the output head to wte")
    problems = [f"missing: {few(missing)}"] if missing else []
    problems += [f"unexpected: {few(unexpected)}"] if unexpected else []
    problems += [f"misshapen: {'; '.join(misshapen[:4])}{' ...' if len(misshapen) > 4 else ''}"] if misshapen else []
    problems += [f"not floating point: {few(not_float)}"] if not_float else []
    if problems:
        raise ValueError(f"checkpoint {where} does not fit its config ({config}):\n  " + "\n  ".join(problems))


def public_to_ours(tensors: dict[str, Tensor], config: GPTConfig, where: str) -> dict[str, Tensor]:
    """Public tensors (either layout, already checked by `check_public`) -> our state dict."""
    tensors = {_unprefixed(key): value for key, value in tensors.items()}
    head = tensors.get("lm_head.weight")
    if head is not None and not torch.equal(head, tensors["wte.weight"]):
        raise ValueError(f"checkpoint {where}: lm_head.weight differs from wte.weight, but GPT-2 ties the output head to wte")
    return {e.ours: tensors[e.public].t().contiguous() if e.conv1d else tensors[e.public] for e in layout(config)}


def wanted(listing: dict[str, StoredTensor]) -> dict[str, StoredTensor]:
    """The stored tensors worth reading: the weights and a stored output head (to check its tie),
    not the mask buffers."""
    return {name: stored for name, stored in listing.items() if not MASK_BUFFER.fullmatch(_unprefixed(name))}


def _unprefixed(name: str) -> str:
    return name.removeprefix(TRANSFORMERS_PREFIX)


def ours_to_public(state: dict[str, Tensor], config: GPTConfig) -> dict[str, Tensor]:
    """Our state dict -> the hub's original layout, mask buffers included, so any reader of the
    public file reads ours."""
    entries = layout(config)
    missing = [e.ours for e in entries if e.ours not in state]
    if missing:  # a model whose modules were swapped (pack_for_cpu, say) no longer holds them
        raise ValueError(f"the model has no tensor for {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}: "
                         "save a model built by GPT (an unpacked one)")
    public = {e.public: (state[e.ours].t() if e.conv1d else state[e.ours]).contiguous() for e in entries}
    n = config.n_positions
    causal = torch.tril(torch.ones(n, n, dtype=torch.float32)).view(1, 1, n, n)
    for i in range(config.n_layer):
        public[f"h.{i}.attn.bias"] = causal.clone()  # safetensors refuses tensors that share memory
    return public
