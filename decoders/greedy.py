"""Greedy decoding: at every step, the single most likely token."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from .generation import DecoderModel, Generation, check_model
from .options import DecodingOptions, decoding_options
from .token_loop import token_loop


def greedy(model: DecoderModel, input_ids: Tensor, *, max_new_tokens: int | None = None,
           attention_mask: Tensor | None = None, on_token: Callable[[Tensor], None] | None = None,
           options: DecodingOptions | None = None, **shared) -> Generation:
    """Extend each prompt row (b t) by up to max_new_tokens argmax tokens.

    Equals `transformers` `generate(do_sample=False, num_beams=1)` with the same options. Prompts of
    different lengths are left-padded, with attention_mask marking the real tokens. The shared
    options (`DecodingOptions`: eos_token_id, pad_token_id, min_new_tokens, no_repeat_ngram_size,
    repetition_penalty, alternatives, keep_logprobs) come as keywords or as `options`. A row stops
    at an EOS, or when the processors leave it no token, and is then padded with pad_token_id;
    decoding stops when every row has stopped.
    """
    check_model(model)
    options = decoding_options("greedy", max_new_tokens, options, shared, own=["on_token"])
    return token_loop(model, input_ids, pick=lambda logits: logits.argmax(dim=-1), options=options,
                      rules=options.rules(model.config.vocab_size), max_new_tokens=max_new_tokens,
                      attention_mask=attention_mask, on_token=on_token)
