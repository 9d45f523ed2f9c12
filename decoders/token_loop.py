"""The loop greedy decoding and sampling share: one token per row per step, KV-cached.

prefill: run the whole prompt once, filling the cache; then each step processes the last
position's logits, lets `choose` pick a token per row, and feeds only that token back.
Mirrors `GenerationMixin._sample` in transformers' `generation/utils.py`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .generation import Generation, check_callback, check_prompt, summarize
from .processors import Processor


@torch.no_grad()  # not inference_mode: its tensors could not feed sequence_logprob with gradients
def token_loop(
    model,
    input_ids: Tensor,
    *,
    choose: Callable[[Tensor], Tensor],
    processors: Processor,
    max_new_tokens: int,
    attention_mask: Tensor | None,
    eos_ids: tuple[int, ...],
    pad_token_id: int,
    on_token: Callable[[Tensor], None] | None = None,
) -> Generation:
    """choose: processed logits (b v) -> token ids (b). on_token: sees each step's tokens (b), for streaming."""
    real = check_prompt(model, input_ids, attention_mask, max_new_tokens)
    check_callback("on_token", on_token)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=input_ids.device)
    b, prompt_length = input_ids.shape
    tokens = input_ids
    finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    records: list[tuple[Tensor, ...]] = []
    if max_new_tokens:
        cache = model.new_cache(b, prompt_length + max_new_tokens)
        logits = model(input_ids, attention_mask=real, cache=cache, only_last=True)[:, -1]  # prefill
    for step in range(max_new_tokens):
        logits = logits.float()  # choose in float32 whatever the model's dtype, as transformers does
        processed = processors(logits, tokens, real, step)
        chosen = choose(processed)  # (b)
        if eos_ids:
            chosen = chosen.masked_fill(finished, pad_token_id)
        processed_logprobs = processed.log_softmax(dim=-1)
        logprobs = processed_logprobs if processed is logits else logits.log_softmax(dim=-1)  # no processor: the same
        score = processed_logprobs.gather(1, chosen[:, None])[:, 0].masked_fill(finished, 0.0)
        logprob = logprobs.gather(1, chosen[:, None])[:, 0].masked_fill(finished, 0.0)
        records.append((score, logprob, ~finished, *summarize(processed_logprobs)))
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)
        real = torch.cat([real, torch.ones_like(chosen[:, None], dtype=torch.bool)], dim=1)
        if on_token is not None:
            on_token(chosen)
        if eos_ids:
            finished = finished | torch.isin(chosen, eos)
            if bool(finished.all()):
                break
        if step + 1 < max_new_tokens:
            logits = model(chosen[:, None], cache=cache, only_last=True)[:, -1]
    return _assemble(tokens, prompt_length, real, records)


def _assemble(tokens: Tensor, prompt_length: int, real: Tensor, records: list[tuple[Tensor, ...]]) -> Generation:
    b = tokens.shape[0]
    if not records:  # max_new_tokens=0: the prompt alone
        per_step = torch.zeros(b, 0, device=tokens.device)
        per_alternative = torch.zeros(b, 0, 0, device=tokens.device)
        return Generation(tokens, prompt_length, real.long(), per_step, per_step, per_step,
                          per_alternative.long(), per_alternative)
    score, logprob, alive, entropy, alt_ids, alt_probs = (torch.stack(column, dim=1) for column in zip(*records))
    mask = torch.cat([real[:, :prompt_length], alive], dim=1).long()
    return Generation(tokens, prompt_length, mask, score, logprob, entropy, alt_ids, alt_probs)
