"""GPT-2: tokens -> embeddings -> blocks -> final LayerNorm -> logits.

Mirrors `GPT2LMHeadModel` in transformers' `modeling_gpt2.py` (Radford et al. 2019). The blocks
are built by a function passed in (`make_block`), so an experiment can swap the attention kernel,
the MLP, the norm or the whole block and load the same weights.

Read `transform` first: it is the forward pass and nothing else. The public calls (`forward`,
`trace`, `run_with_cache`) check their arguments once (boundary.py) and then call it; every
activation passes a hook point (hooks.py) where it can be read or replaced.

Axes (the same letters everywhere; the README lists them): b batch, t new positions, s every
position a query can see (cached + new; a cache's slots), e model width, h heads, l layers,
v vocabulary.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .block import Block, gpt2_block
from .boundary import check_construction, check_inputs, check_output
from .checks import real_tokens
from .components import RMSNorm, make_norm, make_positions
from .config import GPTConfig
from .embedding import TokenEmbedding
from .head_mask import head_gates, kept_heads
from .hooks import HookFn, HookPoint, attached, check_names, hook_points, hooks, not_reached
from .kv_cache import KVCache


@dataclass
class Trace:
    """What a learner looks at: the logits, the residual stream after each stage, the attention."""

    logits: Tensor  # (b t v)
    # n_layer + 1 of (b t e): the embeddings, then each block's output. The last is *before* the
    # final LayerNorm; `after_ln_f` is the same state after it (transformers' last hidden state).
    hidden_states: list[Tensor]
    # n_layer of (b n_head t s), heads under their original numbers: a head that analysis.prune_heads
    # removed has no attention, and its maps are NaN (drawn as "pruned" by the views)
    attentions: list[Tensor]
    after_ln_f: Tensor  # (b t e): ln_f(hidden_states[-1]), the input of the tied output head
    real: Tensor  # (b t) bool: which positions hold real tokens (attention_mask), not padding


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, make_block: Callable[[GPTConfig], Block] = gpt2_block,
                 make_positions: Callable[[GPTConfig], nn.Module] = make_positions):
        super().__init__()
        check_construction(config, make_block, make_positions)
        self.config = config
        self.wte = TokenEmbedding(config.vocab_size, config.n_embd)  # token -> vector; also the output head
        # adds where each token is (positions.py); named as GPT-2's checkpoints name its learned table
        self.wpe = make_positions(config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(make_block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.hook_embed, self.hook_ln_f, self.hook_logits = HookPoint(), HookPoint(), HookPoint()
        self.hook_resid_pre = [HookPoint() for _ in range(config.n_layer)]  # named blocks.{i}.resid_pre
        self.hook_resid_post = [HookPoint() for _ in range(config.n_layer)]  # named blocks.{i}.resid_post
        self.apply(_init_gpt2_weights)
        # GPT-2 paper, 2.3: the projections that write into the residual stream start smaller, at
        # 0.02 / sqrt(2 n_layer), so the stream's variance does not grow with depth (each block
        # adds two of them: attention's and the MLP's). transformers' _init_weights does the same.
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    # ---- the forward pass, bare: no checks, no records ----------------------------------------

    def transform(self, input_ids: Tensor, real: Tensor, cache: KVCache | None = None) -> Tensor:
        """tokens (b t) -> embeddings -> blocks -> final LayerNorm (b t e). Unchecked: `forward` checks.
        real (b t): which new positions hold real tokens. With a cache, the new keys and values go in it."""
        if cache is None:
            slots = torch.arange(input_ids.shape[1], device=input_ids.device)  # (t): the positions are the input's own
        else:
            real, slots = cache.append(real)  # the cache places the new positions: real is now (b s), every slot
        positions, allowed = visibility(real, slots)  # (b t), (b 1 t s)
        x = self.wpe(self.wte(input_ids), positions)  # (b t e): token vectors, their positions added
        x = self.hook_embed(self.drop(x))
        for layer, block in enumerate(self.blocks):
            kv = cache.writer(layer, slots) if cache is not None else None
            x = self.hook_resid_pre[layer](x)
            x = self.hook_resid_post[layer](check_output(f"block {layer}", x, block(x, allowed, kv)))  # (b t e)
        return self.hook_ln_f(self.ln_f(x))

    def head(self, hidden: Tensor) -> Tensor:
        """(... e) -> logits (... v): the output head, tied to the token embedding."""
        return self.hook_logits(self.wte.unembed(hidden))

    def next_logits(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """One decoding step: tokens (b), the token each row just chose -> the logits (b v) of the
        position after it. Unchecked, because the decoders call it with tokens they chose
        themselves: it reads nothing back to the host, so `minigpt.fast` can compile it as one graph."""
        new_real = torch.ones_like(tokens, dtype=torch.bool)[:, None]  # (b 1): a chosen token is real
        return self.head(self.transform(tokens[:, None], new_real, cache))[:, -1]

    # ---- the public, checked calls --------------------------------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None,
                head_mask: Tensor | None = None, only_last: bool = False) -> Tensor:
        """input_ids (b t) -> logits (b t v), or (b 1 v) for the last position with `only_last`.

        attention_mask (b s), 1 for a token and 0 for padding, covers every position the queries
        see: the cached ones, then the new ones. Positions are counted over real tokens only, so a
        left-padded row gets exactly the logits it gets alone. With a cache the mask may be left
        out: the cache remembers its padding, and new tokens are taken as real.
        head_mask (l h) scales each head's output; 0 removes a head. (b l h): a mask for each row.
        """
        real = self.check_inputs(input_ids, attention_mask, cache, head_mask, only_last)
        with self.hooks(head_gates(self, head_mask)):
            hidden = self.transform(input_ids, real, cache)  # (b t e)
            return self.head(hidden[:, -1:] if only_last else hidden)

    def final_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None,
                     head_mask: Tensor | None = None) -> Tensor:
        """input_ids (b t) -> the last hidden state (b t e), after the final LayerNorm: what the
        output head reads (contrastive search compares these). Arguments as in `forward`."""
        real = self.check_inputs(input_ids, attention_mask, cache, head_mask)
        with self.hooks(head_gates(self, head_mask)):
            return self.transform(input_ids, real, cache)

    def check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None,
                     head_mask: Tensor | None = None, only_last: bool = False) -> Tensor:
        """The checks `forward` runs, alone (a decoder checks its prompt with them, once): arguments as
        in `forward`. Returns which of the new positions hold real tokens (b t) bool."""
        return check_inputs(self, input_ids, attention_mask, cache, head_mask, only_last)

    # ---- reading and replacing activations (hooks.py) ------------------------------------------

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point by name, in the order of the forward pass (hooks.py lists them with shapes)."""
        return hook_points(self)

    def hooks(self, fns: dict[str, HookFn]) -> contextlib.AbstractContextManager:
        """`with model.hooks({"blocks.3.resid_pre": fn}):` every pass inside calls fn(activation),
        which returns a replacement or None to keep it: in `model(ids)`, `trace` and every decoder."""
        return hooks(self, fns)

    def run_with_cache(self, input_ids: Tensor, attention_mask: Tensor | None = None, names: list[str] | None = None,
                       head_mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The logits (b t v) and the activations at the named hook points (None: every one the pass
        reaches). A name the model's blocks never form (a fused kernel's pattern) is an error."""
        real = self.check_inputs(input_ids, attention_mask, None, head_mask)
        points = self.hook_points()
        wanted = check_names(names, points)
        acts: dict[str, Tensor] = {}
        keep = {name: (lambda x, name=name: acts.__setitem__(name, x)) for name in wanted}  # returns None: keeps x
        with self.hooks(head_gates(self, head_mask)), attached(points, keep):
            logits = self.head(self.transform(input_ids, real))
        missed = [name for name in wanted if name not in acts]
        if missed and names is not None:
            raise not_reached(missed[0])
        return logits, {name: acts[name] for name in wanted if name in acts}

    def trace(self, input_ids: Tensor, attention_mask: Tensor | None = None, head_mask: Tensor | None = None) -> Trace:
        """The forward pass with every hidden state and attention pattern kept (no cache). The last
        hidden state is before the final LayerNorm; `Trace.after_ln_f` is the one after it."""
        layers = range(self.config.n_layer)
        names = ["embed", *(f"blocks.{i}.resid_post" for i in layers), *(f"blocks.{i}.attn.pattern" for i in layers),
                 "ln_f"]
        logits, acts = self.run_with_cache(input_ids, attention_mask, names=names, head_mask=head_mask)
        return Trace(logits, hidden_states=[acts["embed"], *(acts[f"blocks.{i}.resid_post"] for i in layers)],
                     attentions=[self.every_head(i, acts[f"blocks.{i}.attn.pattern"]) for i in layers],
                     after_ln_f=acts["ln_f"], real=real_tokens(input_ids, attention_mask))

    def every_head(self, layer: int, pattern: Tensor) -> Tensor:
        """A layer's pattern (b h t s), h the heads it kept, as (b n_head t s) under the original head
        numbers, NaN where a head was pruned."""
        kept = kept_heads(self, layer)
        if len(kept) == self.config.n_head:
            return pattern
        full = pattern.new_full((pattern.shape[0], self.config.n_head, *pattern.shape[2:]), float("nan"))
        full[:, kept] = pattern
        return full

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.weight.dtype

    def new_cache(self, batch: int, max_length: int) -> KVCache:
        return KVCache.for_model(self, batch, max_length)


def visibility(real: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
    """Where each new position is, and what it may look at. real (b s): which of the s slots the
    queries can see hold real tokens; slots (t): the slot of each new position (query).
    Returns position ids (b t) and the attention mask `allowed` (b 1 t s).

    Positions count real tokens only, so a left-padded row gets exactly the logits it gets alone.
    Query i may see key j when j is not in its future and j is a real token. A padding query sees
    no real token, so it may see itself: an all-masked softmax row would be NaN, and its output is
    discarded anyway."""
    count = real.long().cumsum(dim=1)  # (b s): real tokens up to and including each slot
    positions = (count.index_select(1, slots) - 1).clamp(min=0)  # (b t); padding counts nothing
    query_at, key_at = slots[:, None], torch.arange(real.shape[1], device=real.device)[None, :]  # (t 1), (1 s)
    allowed = ((key_at <= query_at) & real[:, None, :]) | (key_at == query_at)  # (b t s)
    return positions, allowed[:, None]  # broadcast over heads


def _init_gpt2_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms (the residual
    projections are then drawn again, smaller, in GPT.__init__)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    if isinstance(module, RMSNorm):
        nn.init.ones_(module.weight)
