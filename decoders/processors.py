"""Logits processors: small pure functions (b v) -> (b v), each testable alone.

They mirror transformers' `generation/logits_process.py` and run in its order (`chain`):
repetition penalty, n-gram blocking, minimum length, then, when sampling, temperature, top-k,
top-p, min-p, typical-p. Diverse beam search subtracts its Hamming penalty before all of them.
History-based ones take the tokens so far (b s) and `real` (b s), False on left padding (the
KV cache's own record of it), so padding never changes a row's answer.

Axes: b rows, s tokens so far, v vocabulary.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# (logits (b v), tokens (b s), real (b s), how many tokens were generated so far) -> logits (b v)
Processor = Callable[[Tensor, Tensor, Tensor, int], Tensor]


def penalize_repeats(logits: Tensor, tokens: Tensor, real: Tensor, penalty: float) -> Tensor:
    """Make every token already in the row less likely (CTRL, Keskar et al. 2019): positive
    logits are divided by the penalty, negative ones multiplied, each distinct token once."""
    vocab = logits.shape[-1]
    in_history = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    # padding is sent to a spare column v, which is cut off after: a scatter needs some index
    in_history.scatter_(1, tokens.masked_fill(~real, vocab), True)
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(in_history[:, :vocab], penalized, logits)


def ban_repeated_ngrams(logits: Tensor, tokens: Tensor, real: Tensor, n: int) -> Tensor:
    """Forbid any token that would complete an n-gram the row already holds (prompt included)."""
    if tokens.shape[1] < n:
        return logits
    windows = tokens.unfold(1, n, 1)  # (b windows n): every n-gram so far
    whole = real.unfold(1, n, 1).all(dim=-1)  # (b windows): n-grams that do not reach into padding
    prefix = tokens[:, tokens.shape[1] - (n - 1) :]  # (b n-1): the last n-1 tokens
    # An earlier n-gram whose first n-1 tokens equal the last n-1 would be repeated by its last
    # token: that token is banned. (For n = 1 the prefix is empty and every token so far is banned.)
    completes = (windows[..., :-1] == prefix[:, None, :]).all(dim=-1) & whole  # (b windows)
    vocab = logits.shape[-1]
    banned = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    # every window scatters somewhere: one that completes nothing goes to the spare column v, cut off below
    banned.scatter_(1, torch.where(completes, windows[..., -1], vocab), True)
    return logits.masked_fill(banned[:, :vocab], float("-inf"))


def forbid_tokens(logits: Tensor, token_ids: list[int]) -> Tensor:
    """Give the listed tokens probability zero (used to hold back EOS before a minimum length)."""
    logits = logits.clone()
    logits[:, token_ids] = float("-inf")
    return logits


def divide_by_temperature(logits: Tensor, temperature: float) -> Tensor:
    """A temperature below 1 sharpens the distribution, above 1 flattens it."""
    return logits / temperature


def keep_top_k(logits: Tensor, count: int) -> Tensor:
    """Keep the `count` most likely tokens (and any tied with the last of them)."""
    last = torch.topk(logits, min(count, logits.shape[-1])).values[:, -1:]  # (b 1)
    return logits.masked_fill(logits < last, float("-inf"))


def keep_top_p(logits: Tensor, mass: float) -> Tensor:
    """Nucleus sampling (Holtzman et al. 2019): keep the most likely tokens whose probabilities
    reach `mass` (top_p), including the one that crosses it. Computed from the unlikely end, as
    transformers does: drop tokens while their cumulative probability stays within 1 - mass."""
    ascending, order = torch.sort(logits, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - mass)
    drop[:, -1] = False  # the most likely token always stays
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def keep_min_p(logits: Tensor, fraction: float) -> Tensor:
    """Min-p sampling (Nguyen et al. 2024): keep the tokens at least `fraction` as likely as the
    likeliest one; the cut follows the model's confidence, unlike a fixed top-p mass."""
    probs = logits.softmax(dim=-1)
    remove = probs < fraction * probs.amax(dim=-1, keepdim=True)
    remove.scatter_(1, probs.argmax(dim=-1, keepdim=True), False)  # the likeliest token always stays
    return logits.masked_fill(remove, float("-inf"))


def keep_typical(logits: Tensor, mass: float) -> Tensor:
    """Locally typical sampling (Meister et al. 2023): keep the tokens whose surprise -log p is
    closest to the distribution's entropy (its expected surprise), until their probabilities reach
    `mass`, including the one that crosses it."""
    logprobs = logits.log_softmax(dim=-1)
    entropy = -(logprobs * logprobs.exp()).nansum(dim=-1, keepdim=True)  # (b 1); nansum: 0 * -inf is 0
    distance = (-logprobs - entropy).abs()  # (b v): how atypical each token is
    by_typicality, order = torch.sort(distance, dim=-1)
    cumulative = logits.gather(1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1, keepdim=True).clamp(max=logits.shape[-1] - 1)  # (b 1): the crossing token
    remove = by_typicality > by_typicality.gather(1, last)  # everything less typical than it
    remove[:, 0] = False  # the most typical token always stays
    return logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def hamming_diversity(logprobs: Tensor, earlier: Tensor, penalty: float) -> Tensor:
    """Diverse beam search (Vijayakumar et al. 2016): lower each token's score by `penalty` times
    the number of earlier groups' beams that chose it at this step. logprobs (b k v) for one
    group's k beams of b prompts; earlier (b chosen) the tokens the earlier groups chose."""
    counts = torch.zeros(logprobs.shape[0], logprobs.shape[-1], device=logprobs.device)
    counts.scatter_add_(1, earlier, torch.ones_like(earlier, dtype=counts.dtype))  # (b v): times chosen
    return logprobs - penalty * counts[:, None, :]


def shared(*, repetition_penalty: float, no_repeat_ngram_size: int, min_new_tokens: int,
           eos_ids: tuple[int, ...]) -> list[Processor]:
    """The processors every decoder's options ask for, in transformers' order; off ones left out."""
    steps: list[Processor] = []
    if repetition_penalty != 1.0:
        steps.append(lambda x, tokens, real, new: penalize_repeats(x, tokens, real, repetition_penalty))
    if no_repeat_ngram_size > 0:
        steps.append(lambda x, tokens, real, new: ban_repeated_ngrams(x, tokens, real, no_repeat_ngram_size))
    if min_new_tokens > 0 and eos_ids:
        steps.append(lambda x, tokens, real, new: forbid_tokens(x, list(eos_ids)) if new < min_new_tokens else x)
    return steps


def sampling(*, temperature: float, top_k: int, top_p: float, min_p: float, typical_p: float) -> list[Processor]:
    """The processors sampling adds after the shared ones, in transformers' order; off ones left out."""
    steps: list[Processor] = []
    if temperature != 1.0:
        steps.append(lambda x, tokens, real, new: divide_by_temperature(x, temperature))
    if top_k > 0:
        steps.append(lambda x, tokens, real, new: keep_top_k(x, top_k))
    if top_p < 1.0:
        steps.append(lambda x, tokens, real, new: keep_top_p(x, top_p))
    if min_p > 0.0:
        steps.append(lambda x, tokens, real, new: keep_min_p(x, min_p))
    if typical_p < 1.0:
        steps.append(lambda x, tokens, real, new: keep_typical(x, typical_p))
    return steps


def chain(steps: list[Processor]) -> Processor:
    """The steps as one processor, applied in the order given."""
    def run(logits: Tensor, tokens: Tensor, real: Tensor, new_so_far: int) -> Tensor:
        for step in steps:
            logits = step(logits, tokens, real, new_so_far)
        return logits

    return run
