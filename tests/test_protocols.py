"""The swap contracts (minigpt.attention.Attention, minigpt.block.Block, decoders.DecoderModel):
a minimal block and a minimal attention written only against the protocols, nothing borrowed
from ours, run through the model, the KV cache, `trace` and every decoder; and nanoGPT's block,
adapted only in names (and one hook point, so `trace` can show its pattern), loads GPT-2's
weights and computes exactly what ours does. Each swap-in of minigpt/components runs through the
same two tests as the minimal block."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import Tensor, nn

import decoders
from minigpt import GPT, GPTConfig
from minigpt.attention import KVWrite
from minigpt.hooks import HookPoint

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=40, n_positions=32)


class OneMatrixAttention(nn.Module):
    """Single projection for q, k, v, all heads sharing it; softmax attention over what is allowed."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(width, width), nn.Linear(width, width)
        self.hook_pattern = HookPoint()  # what trace reads

    def forward(self, x: Tensor, allowed: Tensor, kv: KVWrite | None = None) -> Tensor:
        b, t, width = x.shape
        q = self.qkv(x).view(b, t, self.heads, -1).transpose(1, 2)  # (b h t d)
        k, v = q, q
        if kv is not None:
            k, v = kv(k, v)  # (b h s d)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
        pattern = self.hook_pattern(scores.softmax(dim=-1))  # never 0/0: the protocol promises an allowed key per row
        return self.out((pattern @ v).transpose(1, 2).reshape(b, t, width))


class ResidualBlock(nn.Module):
    """x + attention(norm(x)) only, no MLP: a block as unlike GPT-2's as the protocol allows."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(config.n_embd), OneMatrixAttention(config.n_embd, config.n_head)

    def forward(self, x: Tensor, allowed: Tensor, kv: KVWrite | None = None) -> Tensor:
        return x + self.attn(self.norm(x), allowed, kv)


# ---- nanoGPT's block (model.py: CausalSelfAttention, MLP, Block), its names adapted -------------
# What changed: forward takes `allowed` (padding and the cache) instead of a fixed causal `bias`
# buffer, and `kv`, the layer's place in the KV cache; GELU is the tanh one GPT-2 was trained with.

class NanoAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.hook_pattern = HookPoint()

    def forward(self, x: Tensor, allowed: Tensor, kv: KVWrite | None = None) -> Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (part.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for part in (q, k, v))  # (B, nh, T, hs)
        if kv is not None:
            k, v = kv(k, v)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = self.hook_pattern(att.masked_fill(~allowed, float("-inf")).softmax(dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class NanoMLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(config.n_embd, 4 * config.n_embd), nn.Linear(4 * config.n_embd, config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class NanoBlock(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(config.n_embd), NanoAttention(config)
        self.ln_2, self.mlp = nn.LayerNorm(config.n_embd), NanoMLP(config)

    def forward(self, x: Tensor, allowed: Tensor, kv: KVWrite | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), allowed, kv)
        x = x + self.mlp(self.ln_2(x))
        return x


# Each swap-in of minigpt/components, alone or combined, through the same tests as the protocol block
SWAPS = {"rope": dict(position="rope"), "alibi": dict(position="alibi"), "rmsnorm": dict(norm="rmsnorm"),
         "swiglu": dict(mlp="swiglu"), "gqa": dict(n_kv_head=2), "mqa": dict(n_kv_head=1), "qk_norm": dict(qk_norm=True),
         "window": dict(window=3), "all": dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, qk_norm=True,
                                               window=4)}
MODELS = ["protocol block", *SWAPS]


@functools.cache
def model(name: str = "protocol block") -> GPT:
    torch.manual_seed(0)
    if name == "protocol block":
        model = GPT(CONFIG, make_block=ResidualBlock).eval()
    else:
        model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=16, vocab_size=40, n_positions=32, **SWAPS[name])).eval()
    with torch.no_grad():
        model.wte.weight.mul_(40.0)  # peaked logits: no near-ties between the paths compared below
    return model


def prompt():
    ids = torch.randint(0, CONFIG.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("name", MODELS)
def test_the_protocol_block_runs_cached_and_traced_as_uncached(name):
    ids, mask = prompt()
    net = model(name)
    with torch.no_grad():
        whole = net(ids, attention_mask=mask)
        cache = net.new_cache(2, 6)
        first = net(ids[:, :4], attention_mask=mask[:, :4], cache=cache)
        rest = torch.stack([net.next_logits(ids[:, i], cache) for i in range(4, 6)], dim=1)
        trace = net.trace(ids, attention_mask=mask)
    real = mask.bool()
    assert (torch.cat([first, rest], dim=1) - whole)[real].abs().max() <= 1e-5
    assert (trace.logits - whole).abs().max() <= 1e-6
    heads = net.config.n_head
    assert len(trace.attentions) == 2 and trace.attentions[0].shape == (2, heads, 6, 6)
    assert torch.allclose(trace.attentions[1].sum(-1), torch.ones(2, heads, 6))


@pytest.mark.parametrize("name", MODELS)
def test_every_decoder_runs_on_the_protocol_block_and_greedy_matches_uncached_argmax(name):
    ids, mask = prompt()
    net = model(name)
    assert isinstance(net, decoders.DecoderModel)
    out = decoders.greedy(net, ids, attention_mask=mask, max_new_tokens=5)
    sequences, full_mask = ids, mask
    with torch.no_grad():
        for _ in range(5):  # the same tokens, each from a full uncached forward pass
            nxt = net(sequences, attention_mask=full_mask)[:, -1].argmax(-1, keepdim=True)
            sequences, full_mask = torch.cat([sequences, nxt], 1), torch.cat([full_mask, torch.ones_like(nxt)], 1)
    assert torch.equal(out.sequences, sequences)
    runs = [
        decoders.sample(net, ids, attention_mask=mask, max_new_tokens=5, generator=torch.Generator().manual_seed(0)),
        decoders.beam_search(net, ids, attention_mask=mask, num_beams=3, max_new_tokens=5),
        decoders.diverse_beam_search(net, ids, attention_mask=mask, num_beams=4, num_beam_groups=2,
                                     diversity_penalty=1.0, max_new_tokens=5),
        decoders.contrastive_search(net, ids, attention_mask=mask, penalty_alpha=0.0, top_k=3, max_new_tokens=5),
    ]
    for run in runs:
        assert run.new_tokens.shape == (2, 5) and run.new_tokens.min() >= 0
    # contrastive search with alpha 0 is greedy: the two decoders agree through the protocol block
    assert torch.equal(runs[-1].sequences, out.sequences)


def test_nanogpts_block_loads_gpt2s_weights_and_computes_what_ours_does():
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=60, n_positions=32)
    torch.manual_seed(0)
    ours = GPT(config).eval()
    nano = GPT(config, make_block=NanoBlock).eval()
    nano.load_state_dict(ours.state_dict(), strict=True)  # the same parameter names and shapes
    ids = torch.randint(0, 60, (2, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        assert (nano(ids, attention_mask=mask) - ours(ids, attention_mask=mask)).abs().max() <= 1e-5
        ours_trace, nano_trace = ours.trace(ids, mask), nano.trace(ids, mask)
    for a, b in zip(ours_trace.attentions + ours_trace.hidden_states, nano_trace.attentions + nano_trace.hidden_states):
        assert (a - b).abs().max() <= 1e-5
    runs = [
        lambda m: decoders.greedy(m, ids, attention_mask=mask, max_new_tokens=6),
        lambda m: decoders.sample(m, ids, attention_mask=mask, max_new_tokens=6, generator=torch.Generator().manual_seed(0)),
        lambda m: decoders.beam_search(m, ids, attention_mask=mask, num_beams=3, max_new_tokens=6),
        lambda m: decoders.diverse_beam_search(m, ids, attention_mask=mask, num_beams=4, num_beam_groups=2,
                                               diversity_penalty=1.0, max_new_tokens=6),
        lambda m: decoders.contrastive_search(m, ids, attention_mask=mask, penalty_alpha=0.6, top_k=3, max_new_tokens=6),
    ]
    for run in runs:
        assert torch.equal(run(nano).sequences, run(ours).sequences)


class Sinusoids(nn.Module):
    """A position scheme of one's own ('Attention Is All You Need' 3.5), to GPT's make_positions
    contract: embeddings (b t e) and positions (b t) -> embeddings with the positions added."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        from minigpt.check.positions import sinusoids
        self.register_buffer("table", sinusoids(config.n_positions, config.n_embd), persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        return x + self.table[positions]


def test_a_position_scheme_passed_to_the_model_runs_cached_padded_and_decoded():
    torch.manual_seed(0)
    net = GPT(CONFIG, make_positions=Sinusoids).eval()
    assert "wpe.weight" not in net.state_dict()  # a fixed table: nothing to load or save
    ids, mask = prompt()
    with torch.no_grad():
        whole = net(ids, attention_mask=mask)
        cache = net.new_cache(2, 6)
        first = net(ids[:, :4], attention_mask=mask[:, :4], cache=cache)
        rest = torch.stack([net.next_logits(ids[:, i], cache) for i in range(4, 6)], dim=1)
        alone = net(ids[1:, 2:])  # row 1 without its two padding tokens
    assert (torch.cat([first, rest], dim=1) - whole)[mask.bool()].abs().max() <= 1e-5
    assert (whole[1, 2:] - alone[0]).abs().max() <= 1e-5  # positions count real tokens only
    assert torch.equal(decoders.greedy(net, ids, attention_mask=mask, max_new_tokens=4).sequences[:, :6], ids)
