"""Ancestral sampling: draw each token from the (processed) distribution."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from minigpt.checks import check_fits_in_memory, check_int

from . import processors
from .generation import DecoderModel, Generation, check_model, repeat_rows
from .options import DecodingOptions, check_sampling, decoding_options
from .token_loop import token_loop


def sample(model: DecoderModel, input_ids: Tensor, *, max_new_tokens: int | None = None, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, typical_p: float = 1.0, num_return_sequences: int = 1,
           generator: torch.Generator | None = None, attention_mask: Tensor | None = None,
           on_token: Callable[[Tensor], None] | None = None, options: DecodingOptions | None = None,
           **shared) -> Generation:
    """Extend each prompt row by up to max_new_tokens sampled tokens.

    top_k=0, top_p=1.0, min_p=0.0 and typical_p=1.0 are off; they apply in transformers' order
    (temperature, top-k, top-p, min-p, typical-p). num_return_sequences=r draws r continuations of
    each prompt: rows (b r) of the result, the prompts repeated as transformers repeats them, so
    seeded tokens stay equal. Note that transformers' generate() applies top_k=50 when
    sampling unless told otherwise; pass top_k=50 here to get its default behaviour.
    temperature=0 is the limit of an ever sharper distribution: it decodes greedily (argmax of
    the processed logits) and draws nothing from the generator.
    With generator=torch.Generator().manual_seed(s), the tokens equal those of
    `torch.manual_seed(s); model.generate(do_sample=True, ...)` with the same options.
    The shared options, padding and stopping are as in `greedy`.
    """
    check_model(model)
    options = decoding_options("sample", max_new_tokens, options, shared,
                               own=["temperature", "top_k", "top_p", "min_p", "typical_p", "num_return_sequences",
                                    "generator", "on_token"])
    check_sampling(temperature, top_k, top_p, min_p, typical_p)
    check_int("num_return_sequences", num_return_sequences, 1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and generator.device.type != model.device.type:
        raise ValueError(f"generator is on {generator.device} but the model is on {model.device}; "
                         f"make it with torch.Generator(device={model.device.type!r})")
    then = processors.sampling(temperature=temperature or 1.0, top_k=top_k, top_p=top_p, min_p=min_p,
                               typical_p=typical_p)

    def draw(logits: Tensor) -> Tensor:
        if temperature == 0:
            return logits.argmax(dim=-1)
        # a row whose every token is banned has no distribution (NaN); it stops, whatever is drawn for it
        return torch.multinomial(logits.softmax(dim=-1).nan_to_num(1.0), num_samples=1, generator=generator)[:, 0]

    if isinstance(input_ids, Tensor) and input_ids.dim() == 2:  # the repeated prompt is made before the loop checks
        check_fits_in_memory(input_ids.numel() * num_return_sequences * 16, f"{num_return_sequences} sequences of "
                             f"each of {input_ids.shape[0]} prompts", input_ids.device)
    if num_return_sequences > 1:  # each prompt row r times in a row: (b t) -> ((b r) t)
        input_ids = repeat_rows(input_ids, num_return_sequences, "input_ids")
        attention_mask = None if attention_mask is None else repeat_rows(attention_mask, num_return_sequences,
                                                                          "attention_mask")
    return token_loop(model, input_ids, pick=draw, options=options, rules=options.rules(model.config.vocab_size, then),
                      max_new_tokens=max_new_tokens, attention_mask=attention_mask, on_token=on_token)
