"""Solutions to the exercises (course.ipynb): the test suite fills each blank with the definition
of the same name from this file and runs the notebook again; every check must then pass."""

import math

import torch
from torch import nn


def attend(q, k, v, allowed, dropout_p, at):
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(allowed.logical_not(), float("-inf"))  # the future and padding
    pattern = at.hook_pattern(scores.softmax(dim=-1))  # over the keys
    return torch.einsum("bhts,bhsd->bhtd", pattern, v)


class MyBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        e, self.heads = config.n_embd, config.n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(e), nn.LayerNorm(e)
        self.attn, self.mlp = nn.Module(), nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(e, 3 * e), nn.Linear(e, e)
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(e, 4 * e), nn.Linear(4 * e, e)

    def forward(self, x, allowed, kv=None):
        q, k, v = (part.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (b h t d) each
                   for part in self.attn.c_attn(self.ln_1(x)).chunk(3, dim=-1))
        if kv is not None:
            k, v = kv(k, v)  # every position so far
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
        out = scores.softmax(dim=-1) @ v  # (b h t d)
        x = x + self.attn.c_proj(out.transpose(1, 2).flatten(2))
        hidden = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(nn.functional.gelu(hidden, approximate="tanh"))


def greedy(model, input_ids, max_new_tokens):
    ids = input_ids
    for _ in range(max_new_tokens):
        logits = model(ids)  # (b t v): the last position predicts the next token
        ids = torch.cat([ids, logits[:, -1, :].argmax(dim=-1, keepdim=True)], dim=-1)
    return ids


def beam_step(scores, logprobs):
    b, k, v = logprobs.shape
    candidates = scores.unsqueeze(-1) + logprobs  # (b k v): every beam x token
    best, flat = candidates.view(b, -1).topk(k, dim=-1)
    return best, torch.div(flat, v, rounding_mode="floor"), flat.remainder(v)


def top_p(logits, p):
    probs = logits.softmax(dim=-1)
    ordered, order = probs.sort(dim=-1, descending=True)
    mass_before = ordered.cumsum(dim=-1) - ordered  # the mass of the more likely tokens
    keep_sorted = mass_before < p  # the one that crosses p is kept too
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.where(keep, torch.full_like(logits, float("-inf")))


def entropy(pattern):
    p_log_p = torch.where(pattern > 0, pattern * pattern.log(), torch.zeros_like(pattern))  # 0 log 0 = 0
    return -p_log_p.sum(dim=-1)


def importance(model, input_ids):
    gates = torch.ones(model.config.n_layer, model.config.n_head, requires_grad=True)
    logits = model(input_ids, head_mask=gates)
    loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten())
    (gradient,) = torch.autograd.grad(loss, gates)
    return gradient.abs()


def positions(n_positions, n_embd):
    position = torch.arange(n_positions, dtype=torch.float32).unsqueeze(1)
    frequency = 10000.0 ** (-torch.arange(0, n_embd, 2, dtype=torch.float32) / n_embd)
    angles = position * frequency  # (n e/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(n_positions, n_embd)
