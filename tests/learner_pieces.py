"""Pieces as a learner writes them, for minigpt.check: right ones, and wrong ones, each with the
one idea it gets wrong (the cause minigpt.check must name first). Nothing here borrows minigpt's
code: each is written from the course, the way a learner would."""

from __future__ import annotations

import math

import torch
from torch import nn

# ---- attention kernels: attend(q, k, v, allowed, dropout_p, at) ---------------------------------


def kernel(q, k, v, allowed, dropout_p, at):
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    scores = scores.masked_fill(~allowed, float("-inf"))
    pattern = at.hook_pattern(torch.softmax(scores, dim=-1))
    return pattern @ v


def kernel_no_scale(q, k, v, allowed, dropout_p, at):
    scores = (q @ k.transpose(-2, -1)).masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def kernel_scale_by_d(q, k, v, allowed, dropout_p, at):
    scores = q @ k.transpose(-2, -1) / q.shape[-1]
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def kernel_no_mask(q, k, v, allowed, dropout_p, at):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def kernel_sees_next(q, k, v, allowed, dropout_p, at):
    t, s = q.shape[-2], k.shape[-2]
    mask = torch.tril(torch.ones(t, s), diagonal=s - t + 1).bool()  # "+1 so the query sees itself"
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def kernel_own_triangle(q, k, v, allowed, dropout_p, at):
    t, s = q.shape[-2], k.shape[-2]
    causal = torch.tril(torch.ones(t, s), diagonal=s - t).bool()
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~causal, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def kernel_masked_to_zero(q, k, v, allowed, dropout_p, at):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores * allowed  # masked scores become 0
    return torch.softmax(scores, dim=-1) @ v


def kernel_mask_after_softmax(q, k, v, allowed, dropout_p, at):
    pattern = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    pattern = at.hook_pattern(pattern * allowed)
    return pattern @ v


def kernel_softmax_over_queries(q, k, v, allowed, dropout_p, at):
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
    pattern = at.hook_pattern(torch.softmax(scores, dim=2))
    return pattern.nan_to_num() @ v


# ---- attention modules: forward(x, allowed, kv=None), GPT-2's names ------------------------------

class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def split(self, x):  # (b, t, e) -> (b, heads, t, e / heads)
        b, t, e = x.shape
        return x.view(b, t, self.n_head, e // self.n_head).transpose(1, 2)

    def merge(self, y):
        b, h, t, d = y.shape
        return y.transpose(1, 2).reshape(b, t, h * d)

    def forward(self, x, allowed, kv=None):
        q, k, v = (self.split(part) for part in self.c_attn(x).chunk(3, dim=-1))
        if kv is not None:
            k, v = kv(k, v)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
        return self.c_proj(self.merge(torch.softmax(scores, dim=-1) @ v))


class AttentionHeadsTransposed(Attention):
    def split(self, x):  # "(t, e) -> heads": the width read as (d, h)
        b, t, e = x.shape
        return x.view(b, t, e // self.n_head, self.n_head).permute(0, 3, 1, 2)

    def merge(self, y):
        b, h, t, d = y.shape
        return y.permute(0, 2, 3, 1).reshape(b, t, d * h)


class AttentionCachesKeysTwice(Attention):
    def forward(self, x, allowed, kv=None):
        q, k, v = (self.split(part) for part in self.c_attn(x).chunk(3, dim=-1))
        if kv is not None:
            k, v = kv(k, k)  # meant kv(k, v)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
        return self.c_proj(self.merge(torch.softmax(scores, dim=-1) @ v))


class WideHeadSelfAttention(nn.Module):
    """The course's SelfAttention: every head as wide as the model, its own q, k, v per head."""

    def __init__(self, config):
        super().__init__()
        e, self.heads = config.n_embd, config.n_head
        self.qkv = nn.Linear(e, 3 * e * self.heads)
        self.out = nn.Linear(e * self.heads, e)

    def forward(self, x, allowed, kv=None):
        b, t, e = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, e).permute(2, 0, 3, 1, 4)  # each (b h t e)
        if kv is not None:
            k, v = kv(k, v)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(e)).masked_fill(~allowed, float("-inf"))
        return self.out((torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, self.heads * e))


# ---- MLPs and norms -------------------------------------------------------------------------------

class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def act(self, x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class MLPExactGelu(MLP):
    def act(self, x):
        return torch.nn.functional.gelu(x)


class MLPGeluTypo(MLP):
    def act(self, x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.44715 * x ** 3)))


class MLPRelu(MLP):
    def act(self, x):
        return torch.relu(x)


class LayerNorm(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        self.bias = nn.Parameter(torch.zeros(config.n_embd))
        self.eps = config.layer_norm_epsilon

    def normalise(self, x):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps)

    def forward(self, x):
        return self.normalise(x) * self.weight + self.bias


class LayerNormUnbiased(LayerNorm):
    def normalise(self, x):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + self.eps)


class LayerNormEpsOutside(LayerNorm):
    def normalise(self, x):
        return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, unbiased=False) + self.eps)


class LayerNormOverPositions(LayerNorm):
    def normalise(self, x):
        mean = x.mean(1, keepdim=True)
        return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(1, keepdim=True) + self.eps)


class LayerNormNoAffine(LayerNorm):
    def forward(self, x):
        return self.normalise(x)


# ---- blocks -------------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(config.n_embd), Attention(config)
        self.ln_2, self.mlp = nn.LayerNorm(config.n_embd), MLP(config)

    def forward(self, x, allowed, kv=None):
        x = x + self.attn(self.ln_1(x), allowed, kv)
        return x + self.mlp(self.ln_2(x))


class BlockPostLN(Block):
    def forward(self, x, allowed, kv=None):
        x = self.ln_1(x + self.attn(x, allowed, kv))
        return self.ln_2(x + self.mlp(x))


class BlockNoAttentionResidual(Block):
    def forward(self, x, allowed, kv=None):
        x = self.attn(self.ln_1(x), allowed, kv)
        return x + self.mlp(self.ln_2(x))


class BlockNoMLPResidual(Block):
    def forward(self, x, allowed, kv=None):
        x = x + self.attn(self.ln_1(x), allowed, kv)
        return self.mlp(self.ln_2(x))


class BlockNormsSwapped(Block):
    def forward(self, x, allowed, kv=None):
        x = x + self.attn(self.ln_2(x), allowed, kv)
        return x + self.mlp(self.ln_1(x))


class BlockHeadsTransposed(Block):
    def __init__(self, config):
        super().__init__(config)
        self.attn = AttentionHeadsTransposed(config)


# ---- decoding -----------------------------------------------------------------------------------

def top_p(logits, p):
    probs, order = torch.sort(logits.softmax(-1), descending=True)
    before = probs.cumsum(-1) - probs  # the mass of the tokens more likely than each
    drop = before >= p
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def top_p_without_crossing(logits, p):
    probs, order = torch.sort(logits.softmax(-1), descending=True)
    drop = probs.cumsum(-1) > p
    drop[:, 0] = False
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def top_k(logits, k):
    kth = torch.topk(logits, k).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_k_one_too_many(logits, k):
    kth = torch.topk(logits, min(k + 1, logits.shape[-1])).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def sampler(logits, temperature, generator):
    return torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]


def sampler_times_temperature(logits, temperature, generator):
    return torch.multinomial(torch.softmax(logits * temperature, -1), 1, generator=generator)[:, 0]


def sampler_argmax(logits, temperature, generator):
    return (logits / temperature).argmax(-1)


def greedy(model, ids, n):
    for _ in range(n):
        next_token = model(ids)[:, -1].argmax(-1)
        ids = torch.cat([ids, next_token[:, None]], dim=1)
    return ids


def greedy_first_logits(model, ids, n):
    for _ in range(n):
        next_token = model(ids)[:, 0].argmax(-1)
        ids = torch.cat([ids, next_token[:, None]], dim=1)
    return ids


def entropy(pattern):
    return -(pattern * torch.log(pattern.clamp(min=1e-30))).sum(-1)


def entropy_bits(pattern):
    return -(pattern * torch.log2(pattern.clamp(min=1e-30))).sum(-1)


def entropy_nan(pattern):
    return -(pattern * torch.log(pattern)).sum(-1)


# ---- the set: (kind, piece, the cause minigpt.check must name first) ------------------------------

BUGS = [
    ("attend", kernel_no_scale, "no-scale"),
    ("attend", kernel_scale_by_d, "scale-by-d"),
    ("attend", kernel_no_mask, "no-mask"),
    ("attend", kernel_sees_next, "mask-off-by-one"),
    ("attend", kernel_own_triangle, "own-causal-mask"),
    ("attend", kernel_masked_to_zero, "masked-to-zero"),
    ("attend", kernel_mask_after_softmax, "mask-after-softmax"),
    ("attend", kernel_softmax_over_queries, "softmax-over-queries"),
    ("attention", AttentionHeadsTransposed, "heads-split-order"),
    ("attention", AttentionCachesKeysTwice, "cache-keys-as-values"),
    ("attention", WideHeadSelfAttention, "cache-contract"),
    ("block", BlockPostLN, "post-ln"),
    ("block", BlockNoAttentionResidual, "no-attn-residual"),
    ("block", BlockNoMLPResidual, "no-mlp-residual"),
    ("block", BlockNormsSwapped, "norms-swapped"),
    ("block", BlockHeadsTransposed, "heads-split-order"),
    ("mlp", MLPExactGelu, "gelu-exact"),
    ("mlp", MLPGeluTypo, "gelu-constant"),
    ("mlp", MLPRelu, "relu"),
    ("norm", LayerNormUnbiased, "norm-unbiased"),
    ("norm", LayerNormEpsOutside, "norm-eps-outside"),
    ("norm", LayerNormOverPositions, "norm-wrong-axis"),
    ("norm", LayerNormNoAffine, "norm-no-affine"),
    ("top_p", top_p_without_crossing, "top-p-drops-crossing"),
    ("top_k", top_k_one_too_many, "top-k-off-by-one"),
    ("sampler", sampler_times_temperature, "temperature-multiplies"),
    ("sampler", sampler_argmax, "sampler-argmax"),
    ("decoder", greedy_first_logits, "greedy-first-position"),
    ("entropy", entropy_bits, "entropy-bits"),
    ("entropy", entropy_nan, "entropy-nan"),
]

RIGHT = [("attend", kernel), ("attention", Attention), ("block", Block), ("mlp", MLP), ("norm", LayerNorm),
         ("top_p", top_p), ("top_k", top_k), ("sampler", sampler), ("decoder", greedy), ("entropy", entropy)]


# ---- beam step, head importance, positions -------------------------------------------------------

def beam_step(scores, logprobs):
    b, k, v = logprobs.shape
    total = (scores[:, :, None] + logprobs).reshape(b, k * v)
    best, index = total.topk(k, dim=1)
    return best, index // v, index % v


def beam_step_forgets_scores(scores, logprobs):
    b, k, v = logprobs.shape
    best, index = logprobs.reshape(b, k * v).topk(k, dim=1)
    return best, index // v, index % v


def beam_step_per_beam(scores, logprobs):
    best, token = (scores[:, :, None] + logprobs).max(-1)
    order = best.argsort(1, descending=True)
    return best.gather(1, order), order, token.gather(1, order)


def importance(model, ids):
    gates = torch.ones(model.config.n_layer, model.config.n_head, requires_grad=True)
    logits = model(ids, head_mask=gates)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    return gates.grad.abs()


def importance_signed(model, ids):
    gates = torch.ones(model.config.n_layer, model.config.n_head, requires_grad=True)
    logits = model(ids, head_mask=gates)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return torch.autograd.grad(loss, gates)[0]


def sinusoidal(n, d):
    table = torch.zeros(n, d)
    position = torch.arange(n).float()[:, None]
    rate = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2).float() / d)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    return table


def sinusoidal_halves(n, d):
    angle = torch.arange(n).float()[:, None] * torch.exp(-math.log(10000.0) * torch.arange(0, d, 2).float() / d)
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def not_written(q, k, v, allowed, dropout_p, at):
    raise NotImplementedError("your attention here")


BUGS += [
    ("beam_step", beam_step_forgets_scores, "beam-scores-not-added"),
    ("beam_step", beam_step_per_beam, "beam-each-alone"),
    ("importance", importance_signed, "importance-signed"),
    ("positions", sinusoidal_halves, "positions-halves"),
    ("attend", not_written, "not-written"),
]
RIGHT += [("beam_step", beam_step), ("importance", importance), ("positions", sinusoidal)]


def repetition_penalty(logits, tokens, penalty):
    out = logits.clone()
    for row in range(logits.shape[0]):
        for token in set(tokens[row].tolist()):
            value = logits[row, token]
            out[row, token] = value / penalty if value > 0 else value * penalty
    return out


def repetition_penalty_divides(logits, tokens, penalty):
    out = logits.clone()
    for row in range(logits.shape[0]):
        for token in set(tokens[row].tolist()):
            out[row, token] = logits[row, token] / penalty
    return out


BUGS += [("repetition", repetition_penalty_divides, "penalty-divides-negative")]
RIGHT += [("repetition", repetition_penalty)]
