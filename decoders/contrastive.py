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

from .generation import ALTERNATIVES, DecoderModel, Generation, decoding_rules
from .token_loop import token_loop


class ContrastiveStep:
    """The `Step` of contrastive search (see token_loop.py)."""

    def __init__(self, model, penalty_alpha: float, top_k: int):
        self.model, self.alpha, self.top_k = model, penalty_alpha, top_k

    def start(self, input_ids: Tensor, real: Tensor, max_length: int) -> Tensor:
        self.cache = self.model.new_cache(input_ids.shape[0], max_length)
        # (b s e): the hidden state of every position so far, which candidates are compared with
        self.context = self.model.transform(input_ids, real, self.cache)
        return self.model.head(self.context[:, -1:])[:, -1]

    def choose(self, processed: Tensor) -> Tensor:
        b, c = processed.shape[0], self.top_k  # c candidates per row
        top_probs, candidates = processed.softmax(dim=-1).topk(c, dim=-1)  # (b c)
        # Every candidate one step ahead: row i's cache copied c times, the candidates as one batch.
        ahead = self.cache.take_rows(torch.arange(b, device=processed.device).repeat_interleave(c))
        new_real = torch.ones(b * c, 1, dtype=torch.bool, device=processed.device)  # a candidate is a real token
        hidden = self.model.transform(candidates.reshape(b * c, 1), new_real, ahead)[:, -1].float()  # ((b c) e)
        hidden = hidden.view(b, c, -1)
        # Degeneration penalty: the highest cosine similarity to any earlier real position.
        context = self.context.float()
        similarity = einsum(hidden / hidden.norm(dim=-1, keepdim=True), context / context.norm(dim=-1, keepdim=True),
                            "b c e, b s e -> b c s")
        real = self.cache.real[:, : context.shape[1]]  # (b s): the cache knows which positions are padding
        padding = (~real).float() * torch.finfo(similarity.dtype).min  # padding never counts
        penalty = (similarity + padding[:, None, :]).amax(dim=-1)  # (b c)
        best = ((1 - self.alpha) * top_probs - self.alpha * penalty).argmax(dim=-1)  # (b)
        # Keep the chosen candidate's cache row, hidden state and next logits: no second forward.
        kept = torch.arange(b, device=processed.device) * c + best
        self.cache = ahead.take_rows(kept)
        chosen_hidden = hidden.view(b * c, -1)[kept]  # (b e)
        self.context = torch.cat([self.context, chosen_hidden[:, None].to(self.context.dtype)], dim=1)
        self.next_logits = self.model.head(chosen_hidden[:, None].to(self.context.dtype))[:, -1]
        return candidates.gather(1, best[:, None])[:, 0]

    def advance(self, tokens: Tensor) -> Tensor:
        return self.next_logits  # found while the candidates were scored


def contrastive_search(
    model: DecoderModel,
    input_ids: Tensor,
    *,
    penalty_alpha: float,
    top_k: int,
    max_new_tokens: int,
    attention_mask: Tensor | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    min_new_tokens: int = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    on_token: Callable[[Tensor], None] | None = None,
    alternatives: int = ALTERNATIVES,
    keep_logprobs: bool = False,
) -> Generation:
    """Extend each prompt row by up to max_new_tokens tokens chosen by contrastive search.

    Equals transformers 4.55.4 `generate(penalty_alpha=..., top_k=..., do_sample=False)`. The
    candidates come from the processed distribution (the processors as in greedy); penalty_alpha
    in [0, 1] weighs the degeneration penalty against the model's confidence; top_k >= 1 candidates
    are run ahead each step, so a step costs a forward of b * top_k rows. Padding and stopping as in greedy.
    """
    rules = decoding_rules(model, eos_token_id=eos_token_id, pad_token_id=pad_token_id, min_new_tokens=min_new_tokens,
                           no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty)
    check_float("penalty_alpha", penalty_alpha, 0.0, 1.0)
    check_int("top_k", top_k, 1, model.config.vocab_size)
    return token_loop(model, input_ids, step=ContrastiveStep(model, penalty_alpha, top_k), rules=rules,
                      max_new_tokens=max_new_tokens, attention_mask=attention_mask, on_token=on_token,
                      alternatives=alternatives, keep_logprobs=keep_logprobs)
