"""The loop greedy decoding and sampling share: one token per row per step, KV-cached.

prefill: run the whole prompt once, filling the cache; then each step processes the last
position's logits, lets `choose` pick a token per row, and feeds only that token back.
Mirrors `GenerationMixin._sample` in transformers' `generation/utils.py`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .generation import ALTERNATIVES, Generation, check_callback, check_prompt, check_record_options, summarize
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
    alternatives: int = ALTERNATIVES,
    keep_logprobs: bool = False,
) -> Generation:
    """choose: processed logits (b v) -> token ids (b). on_token: sees each step's tokens (b), for
    streaming. alternatives: how many of the likeliest tokens each step remembers. keep_logprobs:
    also keep each step's whole processed log-probability row (b v)."""
    real = check_prompt(model, input_ids, attention_mask, max_new_tokens)
    check_callback("on_token", on_token)
    check_record_options(model, alternatives, keep_logprobs)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=input_ids.device)
    b, prompt_length = input_ids.shape
    tokens = input_ids
    finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    steps: list[dict[str, Tensor]] = []  # what each step records, by Generation's field names
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
        entropy, alternative_ids, alternative_probs = summarize(processed_logprobs, alternatives)
        steps.append({
            "scores": processed_logprobs.gather(1, chosen[:, None])[:, 0].masked_fill(finished, 0.0),
            "token_logprobs": logprobs.gather(1, chosen[:, None])[:, 0].masked_fill(finished, 0.0),
            "alive": ~finished, "entropy": entropy,
            "alternatives": alternative_ids, "alternative_probs": alternative_probs,
        } | ({"step_logprobs": processed_logprobs} if keep_logprobs else {}))
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
    return _assemble(tokens, prompt_length, real, steps, alternatives, keep_logprobs, model.config.vocab_size)


def _assemble(tokens: Tensor, prompt_length: int, real: Tensor, steps: list[dict[str, Tensor]],
              alternatives: int, keep_logprobs: bool, vocab_size: int) -> Generation:
    """Stack the steps' records into a Generation: (b) per step -> (b new), (b a) -> (b new a)."""
    if not steps:  # max_new_tokens=0: the prompt alone
        b, device = tokens.shape[0], tokens.device
        empty = {"scores": torch.zeros(b, 0, device=device), "alive": torch.zeros(b, 0, dtype=torch.bool, device=device),
                 "alternatives": torch.zeros(b, 0, alternatives, dtype=torch.long, device=device),
                 "alternative_probs": torch.zeros(b, 0, alternatives, device=device)}
        empty |= {"token_logprobs": empty["scores"], "entropy": empty["scores"]}
        steps_stacked = empty | ({"step_logprobs": torch.zeros(b, 0, vocab_size, device=device)} if keep_logprobs else {})
    else:
        steps_stacked = {name: torch.stack([step[name] for step in steps], dim=1) for name in steps[0]}
    alive = steps_stacked.pop("alive")
    mask = torch.cat([real[:, :prompt_length], alive], dim=1).long()
    return Generation(sequences=tokens, prompt_length=prompt_length, attention_mask=mask, **steps_stacked)
