"""Greedy decoding: at every step, the single most likely token."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from .generation import ALTERNATIVES, DecoderModel, Generation, decoding_rules
from .token_loop import FeedBack, token_loop


def greedy(
    model: DecoderModel,
    input_ids: Tensor,
    *,
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
    """Extend each prompt row (b t) by up to max_new_tokens argmax tokens.

    Equals `transformers` `generate(do_sample=False, num_beams=1)` with the same options. A row
    stops at eos_token_id (or at any of a list of them) and is then padded with pad_token_id
    (default: the first EOS id); decoding stops when every row has stopped. Prompts of different
    lengths are left-padded, with attention_mask marking the real tokens. Each step remembers its `alternatives` likeliest
    tokens, and with keep_logprobs=True its whole log-probability row (`Generation.step_logprobs`).
    """
    rules = decoding_rules(model, eos_token_id=eos_token_id, pad_token_id=pad_token_id, min_new_tokens=min_new_tokens,
                           no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty)
    return token_loop(model, input_ids, step=FeedBack(model, lambda logits: logits.argmax(dim=-1)), rules=rules,
                      max_new_tokens=max_new_tokens, attention_mask=attention_mask, on_token=on_token,
                      alternatives=alternatives, keep_logprobs=keep_logprobs)
