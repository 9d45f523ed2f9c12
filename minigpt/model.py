"""GPT-2: tokens -> embeddings -> blocks -> final LayerNorm -> logits.

Mirrors `GPT2LMHeadModel` in transformers' `modeling_gpt2.py` (Radford et al. 2019). The blocks
are built by a function passed in (`make_block`), so an experiment can swap the attention kernel,
the MLP, the norm or the whole block and load the same weights.

Axes (the same letters everywhere; the README lists them): b batch, t new positions, s every
position a query can see (cached + new; a cache's slots), e model width, h heads, l layers,
v vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .block import Block, gpt2_block
from .checks import check_finite_tensor, check_fits_in_memory, check_mask, check_token_ids
from .config import GPTConfig
from .embedding import TokenEmbedding
from .kv_cache import KVCache


@dataclass
class Trace:
    """What a learner looks at: the logits, the residual stream after each stage, the attention."""

    logits: Tensor  # (b t v)
    # n_layer + 1 of (b t e): the embeddings, then each block's output. The last is *before* the
    # final LayerNorm; `after_ln_f` is the same state after it (transformers' last hidden state).
    hidden_states: list[Tensor]
    attentions: list[Tensor]  # n_layer of (b h t s); h is that layer's head count (fewer if pruned)
    after_ln_f: Tensor  # (b t e): ln_f(hidden_states[-1]), the input of the tied output head


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, make_block: Callable[[GPTConfig], Block] = gpt2_block):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        if not callable(make_block):
            raise ValueError(f"make_block must be a function GPTConfig -> block, got {type(make_block).__name__}")
        default = torch.get_default_device()
        if default.type != "meta":  # on meta nothing is allocated: a loader builds there first
            check_fits_in_memory(config.parameter_count * torch.get_default_dtype().itemsize,
                                 f"GPT({config.parameter_count:,} parameters)", default)
        self.config = config
        self.wte = TokenEmbedding(config.vocab_size, config.n_embd)  # token -> vector; also the output head
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # position -> vector (learned)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(make_block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.apply(_init_gpt2_weights)
        # GPT-2 paper, 2.3: the projections that write into the residual stream start smaller, at
        # 0.02 / sqrt(2 n_layer), so the stream's variance does not grow with depth (each block
        # adds two of them: attention's and the MLP's). transformers' _init_weights does the same.
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None,
                head_mask: Tensor | None = None, only_last: bool = False) -> Tensor:
        """input_ids (b t) -> logits (b t v), or (b 1 v) for the last position with `only_last`.

        attention_mask (b s), 1 for a token and 0 for padding, covers every position the queries
        see: the cached ones, then the new ones. Positions are counted over real tokens only, so a
        left-padded row gets exactly the logits it gets alone. With a cache the mask may be left
        out: the cache remembers its padding, and new tokens are taken as real.
        head_mask (l h) scales each head's output; 0 removes a head.
        """
        if not isinstance(only_last, bool):
            raise ValueError(f"only_last must be True or False, got {only_last!r:.40}")
        hidden = self.final_hidden(input_ids, attention_mask, cache, head_mask)  # (b t e)
        return self.head(hidden[:, -1:] if only_last else hidden)

    def final_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None,
                     head_mask: Tensor | None = None) -> Tensor:
        """input_ids (b t) -> the last hidden state (b t e), after the final LayerNorm: what the
        output head reads (contrastive search compares these). Arguments as in `forward`."""
        real = self.check_inputs(input_ids, attention_mask, cache, head_mask)
        return self._run(input_ids, real, cache, head_mask, record=False)[0]

    def head(self, hidden: Tensor) -> Tensor:
        """(... e) -> logits (... v): the output head, tied to the token embedding."""
        return self.wte.unembed(hidden)

    def trace(self, input_ids: Tensor, attention_mask: Tensor | None = None, head_mask: Tensor | None = None) -> Trace:
        """The forward pass with every hidden state and attention pattern kept (no cache). The last
        hidden state is before the final LayerNorm; `Trace.after_ln_f` is the one after it."""
        real = self.check_inputs(input_ids, attention_mask, None, head_mask)
        final, hidden_states, attentions = self._run(input_ids, real, None, head_mask, record=True)
        return Trace(self.head(final), hidden_states, attentions, final)

    def next_logits(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """One decoding step: tokens (b), the token each row just chose -> the logits (b v) of the
        position after it. Unchecked, because the decoders call it with tokens they chose
        themselves: it reads nothing back to the host, so `minigpt.fast` can compile it as one graph."""
        new_real = torch.ones_like(tokens, dtype=torch.bool)[:, None]  # (b 1): a chosen token is real
        return self.head(self._run(tokens[:, None], new_real, cache, None, record=False)[0][:, -1])

    def _run(
        self,
        input_ids: Tensor,
        real: Tensor,
        cache: KVCache | None,
        head_mask: Tensor | None,
        record: bool,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """tokens -> embeddings -> blocks -> ln_f. real (b t): which of the new positions hold real
        tokens. Returns ln_f's output (b t e) and, with `record`, the residual stream after each
        stage and each layer's attention pattern."""
        if cache is None:
            slots = torch.arange(input_ids.shape[1], device=input_ids.device)  # (t): the positions are the input's own
        else:
            real, slots = cache.append(real)  # the cache places the new positions: real is now (b s), every slot
        positions, allowed = visibility(real, slots)

        x = self.drop(self.wte(input_ids) + self.wpe(positions))  # (b t e)
        hidden_states, attentions = [x], []
        for layer, block in enumerate(self.blocks):
            kv = cache.writer(layer, slots) if cache is not None else None
            head_scale = head_mask[layer] if head_mask is not None else None  # (h): this layer's row of the mask
            x, pattern = block(x, allowed=allowed, kv=kv, head_scale=head_scale)
            if record:
                if pattern is None:
                    raise ValueError(
                        f"block {layer}'s attention kernel does not form attention patterns; "
                        "build the model with explicit_attention to trace it"
                    )
                hidden_states.append(x)
                attentions.append(pattern)
        return self.ln_f(x), hidden_states, attentions

    def check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None,
                     head_mask: Tensor | None = None) -> Tensor:
        """The checks `forward` runs, alone (the decoders check a prompt with them): every argument
        as in `forward`. Returns which of the new positions hold real tokens (b t) bool."""
        config = self.config
        check_token_ids(input_ids, config.vocab_size)
        if input_ids.device != self.device:
            raise ValueError(f"input_ids is on {input_ids.device} but the model is on {self.device}; move one of them")
        b, t = input_ids.shape
        if cache is not None and not isinstance(cache, KVCache):
            raise ValueError(f"cache must be a KVCache (model.new_cache(batch, max_length)), got {type(cache).__name__}")
        past = cache.length if cache is not None else 0
        if past + t > config.n_positions:
            raise ValueError(
                f"{past + t} positions ({past} cached + {t} new) exceed the model's context of "
                f"n_positions={config.n_positions}"
            )
        if cache is not None:
            if cache.batch != b:
                raise ValueError(f"the cache holds {cache.batch} rows but input_ids has {b}")
            if past + t > cache.max_length:
                raise ValueError(f"KVCache is full: it holds {past} of max_length={cache.max_length} positions "
                                 f"and cannot take {t} more")
        if head_mask is not None:
            check_finite_tensor("head_mask", head_mask, (config.n_layer, config.n_head))
        if attention_mask is None:  # every new token is real; with a cache, the cached padding stays as it was
            return torch.ones(b, t, dtype=torch.bool, device=input_ids.device)
        real = check_mask("attention_mask", attention_mask, (b, past + t)).to(input_ids.device)
        if past and not torch.equal(real[:, :past], cache.real[:, :past].to(real.device)):
            raise ValueError(f"attention_mask's first {past} columns contradict the padding the cache already holds")
        return real[:, past:]

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
