"""Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation").

Greedy decoding repeats itself; sampling wanders. Contrastive search takes the top_k likeliest
tokens and picks the one that scores best on

    (1 - α) · p(v)  -  α · max_j cos(h_v, h_j)

where h_v is the model's last hidden state (after the final LayerNorm) with the candidate v
appended, and h_j that of each earlier real position: a candidate whose representation copies
something already said is penalised (the degeneration penalty). α = 0 is greedy.

To score a candidate the model must run it one step ahead: each row's cache is copied to its
top_k candidates (`KVCache.take_rows`), the candidates run as one batch through `transform`,
and the chosen candidate's cache row and next logits are kept, so nothing is computed twice.
Mirrors `GenerationMixin._contrastive_search` in transformers 4.55.4, the last release that ships it.

Axes: b rows, c candidates (top_k), s positions so far, e model width.
"""

from __future__ import annotations

from typing import Callable

import torch
from einops import einsum
from torch import Tensor

from minigpt.checks import check_float, check_int
from minigpt.kv_cache import KVCache

from .generation import DecoderModel, Generation, check_model
from .options import DecodingOptions, decoding_options
from .token_loop import Written


@torch.no_grad()
def contrastive_search(model: DecoderModel, input_ids: Tensor, *, penalty_alpha: float, top_k: int,
                       max_new_tokens: int | None = None, attention_mask: Tensor | None = None,
                       on_token: Callable[[Tensor], None] | None = None,
                       options: DecodingOptions | None = None, **shared) -> Generation:
    """Extend each prompt row by up to max_new_tokens tokens chosen by contrastive search.

    Equals transformers 4.55.4 `generate(penalty_alpha=..., top_k=..., do_sample=False)`. The
    candidates come from the processed distribution (the shared options as in greedy); penalty_alpha
    in [0, 1] weighs the degeneration penalty against the model's confidence; top_k >= 1 candidates
    are run ahead each step, so a step costs a forward of b * top_k rows. A candidate the processors
    banned is never chosen; a row with none left stops. Padding and stopping as in greedy.
    """
    check_model(model)
    options = decoding_options("contrastive_search", max_new_tokens, options, shared,
                               own=["penalty_alpha", "top_k", "on_token"])
    rules = options.rules(model.config.vocab_size)
    check_float("penalty_alpha", penalty_alpha, 0.0, 1.0)
    check_int("top_k", top_k, 1, model.config.vocab_size)
    written = Written(model, input_ids, attention_mask, max_new_tokens, on_token, options, rules)
    if max_new_tokens:
        cache = model.new_cache(input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
        context = model.transform(input_ids, written.prompt_real, cache)  # (b s e): every position's last hidden state
        logits = model.head(context[:, -1:])[:, -1]  # (b v)
    for new in range(max_new_tokens):
        logits = logits.float()  # choose in float32 whatever the model's dtype, as transformers does
        processed = rules.processors(logits, written.tokens, cache.real[:, : written.tokens.shape[1]], new)
        probs, candidates = top_candidates(processed, top_k)  # (b c)
        hidden, ahead = look_ahead(model, cache, candidates)  # (b c e), and the cache with each candidate in it
        banned = processed.gather(1, candidates) == float("-inf")  # fewer than top_k tokens were left
        best = choose(probs, banned, hidden, context, cache.real, penalty_alpha)  # (b)
        cache, context, logits_after = keep(model, ahead, hidden, context, best)
        _, done = written.add(new, logits, processed, candidates.gather(1, best[:, None])[:, 0])
        if done:
            break
        logits = logits_after
    return written.generation()


def top_candidates(processed: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The `count` likeliest tokens of each row's processed distribution (b v): probabilities and ids (b c)."""
    return processed.softmax(dim=-1).topk(count, dim=-1)


def look_ahead(model: DecoderModel, cache: KVCache, candidates: Tensor) -> tuple[Tensor, KVCache]:
    """Every candidate one step ahead: row i's cache copied c times, the candidates run as one batch.
    Returns their last hidden states (b c e) and that cache, rows ((b c))."""
    b, c = candidates.shape
    ahead = cache.take_rows(torch.arange(b, device=candidates.device).repeat_interleave(c))
    new_real = torch.ones(b * c, 1, dtype=torch.bool, device=candidates.device)  # a candidate is a real token
    hidden = model.transform(candidates.reshape(b * c, 1), new_real, ahead)[:, -1]  # ((b c) e)
    return hidden.view(b, c, -1), ahead


def choose(probs: Tensor, banned: Tensor, hidden: Tensor, context: Tensor, real: Tensor, alpha: float) -> Tensor:
    """The candidate (b) with the best (1 - α) p - α · max cosine similarity to an earlier real
    position; a candidate the processors banned (b c) never wins."""
    hidden, context = hidden.float(), context.float()
    similarity = einsum(hidden / hidden.norm(dim=-1, keepdim=True), context / context.norm(dim=-1, keepdim=True),
                        "b c e, b s e -> b c s")
    real = real[:, : context.shape[1]]  # (b s): the cache knows which positions are padding
    padding = (~real).float() * torch.finfo(similarity.dtype).min  # padding never counts
    penalty = (similarity + padding[:, None, :]).amax(dim=-1)  # (b c): the degeneration penalty
    return ((1 - alpha) * probs - alpha * penalty).masked_fill(banned, float("-inf")).argmax(dim=-1)


def keep(model: DecoderModel, ahead: KVCache, hidden: Tensor, context: Tensor, best: Tensor
         ) -> tuple[KVCache, Tensor, Tensor]:
    """The chosen candidate's cache row, its hidden state appended to the context, and the logits
    that follow it (b v): found while the candidates were scored, so nothing runs twice."""
    b, c = hidden.shape[:2]
    kept = torch.arange(b, device=best.device) * c + best
    chosen_hidden = hidden.reshape(b * c, -1)[kept][:, None].to(context.dtype)  # (b 1 e)
    return ahead.take_rows(kept), torch.cat([context, chosen_hidden], dim=1), model.head(chosen_hidden)[:, -1]
