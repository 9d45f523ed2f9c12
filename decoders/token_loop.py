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

from minigpt.checks import check_fits_in_memory
from minigpt.kv_cache import KVCache

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


class Written:
    """What a one-token-a-step loop has written so far: the tokens (b s), which rows have stopped,
    and the records. Made once per call, it checks the prompt and the sizes first."""

    def __init__(self, model: DecoderModel, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int,
                 on_token: Callable[[Tensor], None] | None, options: DecodingOptions, rules: Rules):
        self.prompt_real = real_prompt_tokens(model, input_ids, attention_mask, max_new_tokens)  # (b t)
        check_callback("on_token", on_token)
        b, v = input_ids.shape[0], model.config.vocab_size
        # kept per row and step: three numbers, the alternatives (id and probability), and with
        # keep_logprobs the whole row; checked with the KV cache before either is allocated
        kept = b * max_new_tokens * (12 + options.alternatives * 12 + (v * 4 if options.keep_logprobs else 0))
        check_fits_in_memory(kept + KVCache.bytes_for(model, b, input_ids.shape[1] + max_new_tokens),
                             f"{max_new_tokens} steps of {b} rows with their records", input_ids.device)
        self.tokens, self.on_token = input_ids, on_token
        self.stops = Stops(rules, b, input_ids.device)
        self.recorder = Recorder(options.alternatives, options.keep_logprobs, v)

    def add(self, new: int, logits: Tensor, processed: Tensor, chosen: Tensor) -> tuple[Tensor, bool]:
        """Step `new` chose these tokens (b) from processed (b v): pad where a row has stopped, record,
        stream. Returns the tokens as written and whether it is time to stop."""
        chosen = self.stops.hold(processed, chosen)
        self.recorder.step(logits, processed, chosen, self.stops.alive)
        self.tokens = torch.cat([self.tokens, chosen[:, None]], dim=1)
        if self.on_token is not None:
            self.on_token(chosen)
        return chosen, self.stops.all_stopped(chosen, new)

    def generation(self) -> Generation:
        return self.recorder.generation(self.tokens, self.prompt_real)


@torch.no_grad()  # not inference_mode: its tensors could not feed sequence_logprob with gradients
def token_loop(model: DecoderModel, input_ids: Tensor, *, pick: Callable[[Tensor], Tensor], options: DecodingOptions,
               rules: Rules, max_new_tokens: int, attention_mask: Tensor | None,
               on_token: Callable[[Tensor], None] | None) -> Generation:
    """pick: processed logits (b v) -> one token per row (b). on_token: sees each step's tokens (b),
    for streaming (after every row has stopped, up to STOP_CHECK_EVERY - 1 more steps of padding)."""
    written = Written(model, input_ids, attention_mask, max_new_tokens, on_token, options, rules)
    if max_new_tokens:
        cache = model.new_cache(input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
        logits = prefill(model, input_ids, written.prompt_real, cache)  # (b v)
    nan = torch.zeros((), dtype=torch.bool, device=input_ids.device)  # kept on the device: read once, at the end
    for new in range(max_new_tokens):
        logits = logits.float()  # choose in float32 whatever the model's dtype, as transformers does
        nan |= logits.isnan().any()
        real = cache.real[:, : written.tokens.shape[1]]  # (b s): the cache knows which tokens are padding
        processed = rules.processors(logits, written.tokens, real, new)
        chosen, done = written.add(new, logits, processed, pick(processed))
        if done:
            break
        if new + 1 < max_new_tokens:
            logits = model.next_logits(chosen, cache)
    if bool(nan):  # argmax and multinomial would each pick something from NaN: nothing chosen so is returned
        raise ValueError("the model's logits held NaN while decoding (a hook that wrote NaN, or weights that "
                         "overflow this dtype): no token can be chosen from them")
    return written.generation()
