"""A GPT-2's whole decoding step in one C++ call, where that is faster: `FusedStep`.

At batch 1 a step's matrix products read the weights at close to the memory's speed (rows.cpp),
and what is left is everything around them: the few hundred small PyTorch calls and their Python
(layer norms, reshapes, the cache's index_copy_, the attention's bmm and softmax on one query, the
hook points' tests). `decode_step` in rows.cpp does the same computation in one operator:
embeddings, then per block ln_1, c_attn, the new key and value written into the cache at its
slot, attention over the real slots, c_proj, ln_2, c_fc, GELU (tanh), c_proj; then ln_f. Each
product runs on the kernel its matrix's routes chose for that many rows (kernels.py) where that
is oneDNN or rows.cpp, and on rows.cpp where it is another (every kernel of a format computes the
same numbers; the fused step then measures slower where that matters, and the module step serves
those rows). The head stays the model's own, routed the same way. Its gain grows with the rows:
the fused step does the attention over the filled slots only (docs/fast.md has the profiles).

The model stays the readable one: a `FusedStep` is the step of the `FastGPT` that `optimize`
returns (model.py), and it runs the model's own `next_logits` whenever the fused kernel would
compute something else: a hook set (hooks, head masks, `trace`), the model in train mode, a
module swapped or pruned after fusing (seen from the next generation on), a cache not float32.
Which row counts it serves is measured as the kernels are (kernels.py): the fused step and the
module step take turns at each count in STEP_ROWS, on a cache of STEP_SLOTS slots, and the
faster wins; the choice is cached.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import Tensor, nn

from ..attention import CausalSelfAttention, Unturned, explicit_attention, fused_attention
from ..block import TransformerBlock
from ..kv_cache import KVCache
from ..mlp import MLP, gelu_new
from ..model import GPT
from ..positions import LearnedPositions
from . import kernels
from .gelu import tanh_gelu
from .int8 import Int8Linear
from .packed import PackedLinear
from .rows import PREFETCH, built, ops

STEP_ROWS = (1, 2, 3, 4, 6, 8, 12, 16)  # the batch sizes timed; more rows take the module step
STEP_SLOTS = (32, 64)  # a timed step's cache: 32 slots filled of 64
STEPS = 4  # steps per timed turn (one step is a few milliseconds: too short to time alone)


def not_fusable(model: GPT) -> str | None:
    """Why `decode_step` cannot compute this model's step, or None when it can."""
    if not isinstance(model, GPT):
        return f"it fuses a minigpt GPT, got {type(model).__name__}"
    if model.device.type != "cpu" or model.dtype != torch.float32:
        return f"it runs on the CPU with float32 activations, the model is {model.device} {model.dtype}"
    if not built():
        return "rows.cpp could not be built"
    config = model.config
    if type(model.wpe) is not LearnedPositions:
        return "its positions are not GPT-2's learned table"
    if config.components:
        return f"its config swaps in components GPT-2 does not have ({', '.join(config.components)})"
    for i, block in enumerate(model.blocks):
        if type(block) is not TransformerBlock or type(block.attn) is not CausalSelfAttention or type(block.mlp) is not MLP:
            return f"block {i} is not GPT-2's (TransformerBlock, CausalSelfAttention, MLP)"
        attn = block.attn
        if (attn.attend not in (explicit_attention, fused_attention) or attn.n_head != config.n_head
                or attn.n_kv_head != attn.n_head or type(attn.q_norm) is not nn.Identity
                or type(attn.rotary) is not Unturned):
            return f"block {i}'s attention is swapped or pruned"
        if block.mlp.activation not in (gelu_new, tanh_gelu):
            return f"block {i}'s MLP activation is not GELU (tanh)"
        if not all(plain_norm(n, config) for n in (block.ln_1, block.ln_2)):
            return f"block {i}'s norms are not LayerNorms of width {config.n_embd}"
        for linear in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            if "rows.cpp" not in getattr(getattr(linear, "routes", None), "kernels", {}):
                return f"block {i}'s {type(linear).__name__} has no rows.cpp layout (pack_for_cpu or quantize_int8 first)"
    if not plain_norm(model.ln_f, config):
        return "ln_f is not a LayerNorm"
    return None


def plain_norm(norm: nn.Module, config) -> bool:
    return (type(norm) is nn.LayerNorm and norm.normalized_shape == (config.n_embd,) and norm.weight is not None
            and norm.bias is not None and norm.eps == config.layer_norm_epsilon)


def layer_tensors(block: TransformerBlock) -> list[Tensor]:
    """The 16 tensors decode_step reads for one block, in its order: ln_1 (weight, bias), then per
    matrix (c_attn, attn.c_proj, c_fc, mlp.c_proj) its weight as rows.cpp reads it, the int8
    blocks' scales, the bias; ln_2 between attention and MLP. Missing ones are empty tensors."""
    empty = torch.empty(0)
    tensors = [block.ln_1.weight, block.ln_1.bias]
    for linear in (block.attn.c_attn, block.attn.c_proj, "ln_2", block.mlp.c_fc, block.mlp.c_proj):
        if linear == "ln_2":
            tensors += [block.ln_2.weight, block.ln_2.bias]
            continue
        weight, scales = (linear.q, linear.scales) if isinstance(linear, Int8Linear) else (linear.weight, empty)
        tensors += [weight, scales, empty if linear.bias is None else linear.bias]
    return [t.detach().contiguous() for t in tensors]


def step_kernels(block: TransformerBlock, rows: int) -> list:
    """What decode_step's `kernels` holds for one block at `rows` rows: per matrix (c_attn,
    attn.c_proj, c_fc, mlp.c_proj), where its routes give that many rows to oneDNN, the weight and
    bias it passes oneDNN (packed_routes); to rows.cpp with a prefetch, its distance and
    None; to rows.cpp's tiles, [tiles, their scales (int8), the prefetch distance] and None; else None,
    None (rows.cpp)."""
    entries = []
    for linear in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
        name = linear.routes.name_for(rows)
        entries += ([linear.packed, linear.bias] if name == "oneDNN" else
                    [PREFETCH, None] if name == "rows.cpp+prefetch" else
                    [linear.routes.tiles[0], None] if name == "rows.cpp tiles" else
                    [linear.routes.tiles[PREFETCH], None] if name == "rows.cpp tiles+prefetch" else [None, None])
    return entries


class FusedStep:
    """`next_logits(tokens, cache)` for a model whose step decode_step can compute (module docstring)."""

    def __init__(self, model: GPT, *, verbose: bool = False):
        reason = not_fusable(model)
        if reason:
            raise ValueError(f"the step of this model cannot be fused: {reason}")
        self.model = model
        self.layout = self.modules()  # what the fused kernel was built from; a module swapped since: not fused
        self.weights = [t for block in model.blocks for t in layer_tensors(block)]
        self.kernels: dict[int, list] = {}  # row count -> decode_step's `kernels` (step_kernels)
        self.points = list(model.hook_points().values())
        self.rows: dict[int, str] = {}  # row count -> "fused" or "modules", as measured
        self.rows = choose(self, verbose=verbose)
        self.checked: object = None  # the cache of the generation the layout was last checked for
        self.same_layout = True

    def modules(self) -> tuple:
        """What decode_step stands for: each block's modules and swappable functions, as they are now."""
        return tuple(part for block in self.model.blocks for part in (
            block, block.ln_1, block.attn, block.attn.attend, block.attn.n_head, block.attn.c_attn, block.attn.c_proj,
            block.ln_2, block.mlp, block.mlp.activation, block.mlp.c_fc, block.mlp.c_proj)) + (self.model.ln_f,)

    def fused(self, rows: int, cache: KVCache | None = None) -> bool:
        """Whether a step of `rows` rows runs fused now. The modules are compared with the layout
        once per generation (per cache: reading 150 module attributes takes 0.2 ms, a twentieth
        of an int8 step), the hook points every step."""
        if cache is None or cache is not self.checked:
            self.checked, self.same_layout = cache, self.modules() == self.layout
        return (self.rows.get(min(rows, STEP_ROWS[-1] + 1), "modules") == "fused" and self.same_layout
                and not self.model.training and not any(point.fns for point in self.points))

    def __call__(self, tokens: Tensor, cache: KVCache) -> Tensor:  # tokens (b) -> logits (b v)
        if not (self.fused(tokens.shape[0], cache) and cache.dtype == torch.float32):
            return self.model.next_logits(tokens, cache)
        return self.step(tokens, cache)

    def step(self, tokens: Tensor, cache: KVCache) -> Tensor:
        model = self.model
        real, slot = cache.append(torch.ones_like(tokens, dtype=torch.bool)[:, None])  # (b s), (1)
        batch = tokens.shape[0]
        if batch not in self.kernels:
            self.kernels[batch] = [entry for block in model.blocks for entry in step_kernels(block, batch)]
        hidden = ops().decode_step(tokens.contiguous(), model.wte.weight, model.wpe.weight, self.weights, self.kernels[batch],
                                   cache.keys, cache.values, real, slot, model.ln_f.weight, model.ln_f.bias,
                                   model.config.n_head, model.config.layer_norm_epsilon)
        return model.head(hidden)  # (b e) -> (b v): the routed head, through the logits hook point

    def __repr__(self) -> str:
        fused = [rows for rows, name in self.rows.items() if name == "fused"]
        return f"fused at batch {', '.join(map(str, fused)) or 'none'}, else module by module"


def choose(step: FusedStep, *, verbose: bool = False) -> dict[int, str]:
    """Which row counts the fused step serves: from the kernel cache, else timed now and cached."""
    config = step.model.config
    formats = sorted({m.routes.key.split()[0] for m in step.layout if isinstance(m, (PackedLinear, Int8Linear))})
    key = f"step {'+'.join(formats)} l{config.n_layer} e{config.n_embd} h{config.n_head} v{config.vocab_size} [fused modules]"
    what = f"the fused step against the module step at {len(STEP_ROWS)} batch sizes"
    return kernels.cached([key], lambda keys: {key: measure(step)}, what, verbose)[key]


def measure(step: FusedStep, clock: Callable[[], float] = time.perf_counter) -> tuple[dict[int, str], float]:
    """The faster of the fused and the module step per row count in STEP_ROWS, taking turns
    (kernels.take_turns) in STEPS steps a pass on a cache with STEP_SLOTS[0] slots filled (each
    step writes the same next slot); with the widest spread of the winners' passes."""
    model = step.model
    filled, slots = STEP_SLOTS
    candidates = {"fused": step.step, "modules": model.next_logits}
    chosen, spread = {}, 1.0
    for rows in STEP_ROWS:
        cache = model.new_cache(rows, min(slots, model.config.n_positions))
        cache.append(torch.ones(rows, min(filled, cache.max_length - 1), dtype=torch.bool))
        end = cache.end.clone()
        tokens = torch.zeros(rows, dtype=torch.long)

        def one_pass(name: str) -> dict[str, float]:
            start = clock()
            for _ in range(STEPS):
                cache.end.copy_(end)
                candidates[name](tokens, cache)
            return {"step": clock() - start}

        seconds = kernels.take_turns(list(candidates), one_pass)
        chosen[rows], spread_now = kernels.fastest({name: seconds[("step", name)] for name in candidates})
        spread = max(spread, spread_now)
    return chosen, spread
