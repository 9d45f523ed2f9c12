"""The swap contracts (minigpt.attention.Attention, minigpt.block.Block, decoders.DecoderModel):
a minimal block and a minimal attention written only against the protocols, nothing borrowed
from ours, run through the model, the KV cache, `trace` and every decoder."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

import decoders
from minigpt import GPT, GPTConfig
from minigpt.attention import KVWrite

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=40, n_positions=32)


class OneMatrixAttention(nn.Module):
    """Single projection for q, k, v, all heads sharing it; softmax attention over what is allowed."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: Tensor, *, allowed: Tensor, kv: KVWrite | None, head_scale: Tensor | None):
        b, t, width = x.shape
        q = self.qkv(x).view(b, t, self.heads, -1).transpose(1, 2)  # (b h t d)
        k, v = q, q
        if kv is not None:
            k, v = kv(k, v)  # (b h s d)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
        pattern = scores.softmax(dim=-1)  # never 0/0: the protocol promises an allowed key per row
        out = pattern @ v
        if head_scale is not None:
            out = out * head_scale.view(1, -1, 1, 1)
        return self.out(out.transpose(1, 2).reshape(b, t, width)), pattern


class ResidualBlock(nn.Module):
    """x + attention(norm(x)) only, no MLP: a block as unlike GPT-2's as the protocol allows."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm, self.attention = nn.LayerNorm(config.n_embd), OneMatrixAttention(config.n_embd, config.n_head)

    def forward(self, x: Tensor, *, allowed: Tensor, kv: KVWrite | None, head_scale: Tensor | None):
        attended, pattern = self.attention(self.norm(x), allowed=allowed, kv=kv, head_scale=head_scale)
        return x + attended, pattern


@functools.cache
def model() -> GPT:
    torch.manual_seed(0)
    model = GPT(CONFIG, make_block=ResidualBlock).eval()
    with torch.no_grad():
        model.wte.weight.mul_(40.0)  # peaked logits: no near-ties between the paths compared below
    return model


def prompt():
    ids = torch.randint(0, CONFIG.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    return ids, mask


def test_the_protocol_block_runs_cached_and_traced_as_uncached():
    ids, mask = prompt()
    with torch.no_grad():
        whole = model()(ids, attention_mask=mask)
        cache = model().new_cache(2, 6)
        first = model()(ids[:, :4], attention_mask=mask[:, :4], cache=cache)
        rest = torch.stack([model().next_logits(ids[:, i], cache) for i in range(4, 6)], dim=1)
        trace = model().trace(ids, attention_mask=mask)
    real = mask.bool()
    assert (torch.cat([first, rest], dim=1) - whole)[real].abs().max() <= 1e-5
    assert (trace.logits - whole).abs().max() <= 1e-6
    assert len(trace.attentions) == 2 and trace.attentions[0].shape == (2, 2, 6, 6)
    assert torch.allclose(trace.attentions[1].sum(-1), torch.ones(2, 2, 6))


def test_every_decoder_runs_on_the_protocol_block_and_greedy_matches_uncached_argmax():
    ids, mask = prompt()
    assert isinstance(model(), decoders.DecoderModel)
    out = decoders.greedy(model(), ids, attention_mask=mask, max_new_tokens=5)
    sequences, full_mask = ids, mask
    with torch.no_grad():
        for _ in range(5):  # the same tokens, each from a full uncached forward pass
            nxt = model()(sequences, attention_mask=full_mask)[:, -1].argmax(-1, keepdim=True)
            sequences, full_mask = torch.cat([sequences, nxt], 1), torch.cat([full_mask, torch.ones_like(nxt)], 1)
    assert torch.equal(out.sequences, sequences)
    runs = [
        decoders.sample(model(), ids, attention_mask=mask, max_new_tokens=5, generator=torch.Generator().manual_seed(0)),
        decoders.beam_search(model(), ids, attention_mask=mask, num_beams=3, max_new_tokens=5),
        decoders.diverse_beam_search(model(), ids, attention_mask=mask, num_beams=4, num_beam_groups=2,
                                     diversity_penalty=1.0, max_new_tokens=5),
        decoders.contrastive_search(model(), ids, attention_mask=mask, penalty_alpha=0.0, top_k=3, max_new_tokens=5),
    ]
    for run in runs:
        assert run.new_tokens.shape == (2, 5) and run.new_tokens.min() >= 0
    # contrastive search with alpha 0 is greedy: the two decoders agree through the protocol block
    assert torch.equal(runs[-1].sequences, out.sequences)
