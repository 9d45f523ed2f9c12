"""The loop of the decoders that choose one token per row per step (greedy decoding and sampling;
contrastive search runs its own, with the same `Stops` and `Recorder`).

    prefill: the prompt through the model once, its keys and values into the KV cache
    each step: process the logits -> pick a token per row -> record -> stop? -> the next logits

Mirrors `GenerationMixin._sample` in transformers' `generation/utils.py` (gpt-fast's
`prefill` / `decode_one_token` loop, with transformers' processors and stopping).

Axes: b rows, t prompt positions, s tokens so far, v vocabulary.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .generation import DecoderModel, Generation, check_callback, prefill, real_prompt_tokens
from .options import DecodingOptions, Rules
from .records import Recorder

# Whether every row has stopped is read back to the host every this many steps: a read waits for
# the device, so reading every step would stall a GPU between steps. The steps run after the last
# row stopped (at most this many minus one) are trimmed off the result.
STOP_CHECK_EVERY = 8


class Stops:
    """Which rows have stopped (b): at an EOS, or when the processors left them no token at all
    (n-gram blocking over a small vocabulary, say). A stopped row holds the pad token from then on."""

    def __init__(self, rules: Rules, rows: int, device: torch.device):
        self.rules, self.stopped = rules, torch.zeros(rows, dtype=torch.bool, device=device)
        self.eos = torch.tensor(rules.eos_ids, dtype=torch.long, device=device)

    def hold(self, processed: Tensor, chosen: Tensor) -> Tensor:
        """The chosen tokens (b), the pad token where a row has stopped or has nothing left to choose."""
        self.stopped = self.stopped | ~(processed > float("-inf")).any(dim=-1)  # every token banned (or NaN)
        return chosen.masked_fill(self.stopped, self.rules.pad_token_id)

    @property
    def alive(self) -> Tensor:
        return ~self.stopped

    def all_stopped(self, chosen: Tensor, new: int) -> bool:
        """After a step: rows that chose an EOS stop; every STOP_CHECK_EVERY steps, have all?"""
        if self.rules.eos_ids:
            self.stopped = self.stopped | torch.isin(chosen, self.eos)
        return (new + 1) % STOP_CHECK_EVERY == 0 and bool(self.stopped.all())


def start(model: DecoderModel, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int,
          on_token: Callable | None, options: DecodingOptions, rules: Rules) -> tuple[Tensor, Stops, Recorder]:
    """What every one-token-a-step loop checks and sets up: the prompt's real tokens (b t), the
    stops, the recorder."""
    prompt_real = real_prompt_tokens(model, input_ids, attention_mask, max_new_tokens)
    check_callback("on_token", on_token)
    return (prompt_real, Stops(rules, input_ids.shape[0], input_ids.device),
            Recorder(options.alternatives, options.keep_logprobs, model.config.vocab_size))


@torch.no_grad()  # not inference_mode: its tensors could not feed sequence_logprob with gradients
def token_loop(model: DecoderModel, input_ids: Tensor, *, pick: Callable[[Tensor], Tensor], options: DecodingOptions,
               rules: Rules, max_new_tokens: int, attention_mask: Tensor | None,
               on_token: Callable[[Tensor], None] | None) -> Generation:
    """pick: processed logits (b v) -> one token per row (b). on_token: sees each step's tokens (b),
    for streaming (after every row has stopped, up to STOP_CHECK_EVERY - 1 more steps of padding)."""
    prompt_real, stops, recorder = start(model, input_ids, attention_mask, max_new_tokens, on_token, options, rules)
    tokens = input_ids  # (b s)
    if max_new_tokens:
        cache = model.new_cache(input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
        logits = prefill(model, input_ids, prompt_real, cache)  # (b v)
    for new in range(max_new_tokens):
        logits = logits.float()  # choose in float32 whatever the model's dtype, as transformers does
        processed = rules.processors(logits, tokens, cache.real[:, : tokens.shape[1]], new)  # the cache knows the padding
        chosen = stops.hold(processed, pick(processed))  # (b)
        recorder.step(logits, processed, chosen, stops.alive)
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)
        if on_token is not None:
            on_token(chosen)
        if stops.all_stopped(chosen, new):
            break
        if new + 1 < max_new_tokens:
            logits = model.next_logits(chosen, cache)
    return recorder.generation(tokens, prompt_real)
