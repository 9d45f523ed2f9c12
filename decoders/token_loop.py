"""The loop greedy decoding, sampling and contrastive search share: one token per row per step.

A `Step` says how tokens are chosen and how the next logits are found: `start` runs the prompt
(prefill, filling the KV cache), `choose` picks a token per row from the processed logits, and
`advance` gives the logits that follow the chosen tokens. The loop around it applies the logits
processors, pads rows that have stopped, records what a `Generation` reports, and stops.
Mirrors `GenerationMixin._sample` in transformers' `generation/utils.py`.

Axes: b rows, t prompt positions, s tokens so far, v vocabulary, a alternatives kept per step.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from minigpt.kv_cache import KVCache

from .generation import (ALTERNATIVES, DecoderModel, Generation, Rules, check_callback, check_record_options, prefill,
                         real_prompt_tokens, summarize)

# Whether every row has stopped is read back to the host every this many steps: a read waits for
# the device, so reading every step would stall a GPU between steps. The steps run after the last
# row stopped (at most this many minus one) are trimmed off the result.
STOP_CHECK_EVERY = 8


class Step(Protocol):
    cache: KVCache  # filled by `start`; it holds every token so far, and which of them are real

    def start(self, input_ids: Tensor, real: Tensor, max_length: int) -> Tensor:
        """The prompt (b t), its real-token mask -> the logits (b v) that follow it."""

    def choose(self, processed: Tensor) -> Tensor:
        """Processed logits (b v) -> one token per row (b)."""

    def advance(self, tokens: Tensor) -> Tensor:
        """The tokens just chosen (b) -> the logits (b v) that follow them."""


class FeedBack:
    """The usual step: pick from the processed distribution, then run the chosen token through the
    model, its keys and values going into the cache."""

    def __init__(self, model, pick: Callable[[Tensor], Tensor]):
        self.model, self.pick = model, pick

    def start(self, input_ids: Tensor, real: Tensor, max_length: int) -> Tensor:
        self.cache = self.model.new_cache(input_ids.shape[0], max_length)
        return prefill(self.model, input_ids, real, self.cache)

    def choose(self, processed: Tensor) -> Tensor:
        return self.pick(processed)

    def advance(self, tokens: Tensor) -> Tensor:
        return self.model.next_logits(tokens, self.cache)


@torch.no_grad()  # not inference_mode: its tensors could not feed sequence_logprob with gradients
def token_loop(
    model: DecoderModel,
    input_ids: Tensor,
    *,
    step: Step,
    rules: Rules,
    max_new_tokens: int,
    attention_mask: Tensor | None,
    on_token: Callable[[Tensor], None] | None = None,
    alternatives: int = ALTERNATIVES,
    keep_logprobs: bool = False,
) -> Generation:
    """on_token: sees each step's tokens (b), for streaming (after every row has stopped, it may
    see up to STOP_CHECK_EVERY - 1 more steps of padding). alternatives: how many of the likeliest
    tokens each step remembers. keep_logprobs: also keep each step's whole processed log-probability row."""
    prompt_real = real_prompt_tokens(model, input_ids, attention_mask, max_new_tokens)  # (b t)
    check_callback("on_token", on_token)
    check_record_options(model, alternatives, keep_logprobs)
    eos = torch.tensor(rules.eos_ids, dtype=torch.long, device=input_ids.device)
    b, prompt_length = input_ids.shape
    tokens = input_ids  # (b s)
    stopped = torch.zeros(b, dtype=torch.bool, device=input_ids.device)  # (b): a row that chose an EOS
    records: list[dict[str, Tensor]] = []  # what each step records, by Generation's field names
    if max_new_tokens:
        logits = step.start(input_ids, prompt_real, prompt_length + max_new_tokens)
    for new in range(max_new_tokens):
        logits = logits.float()  # choose in float32 whatever the model's dtype, as transformers does
        real = step.cache.real[:, : tokens.shape[1]]  # (b s): the cache knows which tokens so far are padding
        processed = rules.processors(logits, tokens, real, new)
        chosen = step.choose(processed)  # (b)
        if rules.eos_ids:
            chosen = chosen.masked_fill(stopped, rules.pad_token_id)
        processed_logprobs = processed.log_softmax(dim=-1)
        logprobs = processed_logprobs if processed is logits else logits.log_softmax(dim=-1)  # no processor: the same
        entropy, alternative_ids, alternative_probs = summarize(processed_logprobs, alternatives)
        records.append({
            "scores": processed_logprobs.gather(1, chosen[:, None])[:, 0].masked_fill(stopped, 0.0),
            "token_logprobs": logprobs.gather(1, chosen[:, None])[:, 0].masked_fill(stopped, 0.0),
            "alive": ~stopped, "entropy": entropy,
            "alternatives": alternative_ids, "alternative_probs": alternative_probs,
        } | ({"step_logprobs": processed_logprobs} if keep_logprobs else {}))
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)
        if on_token is not None:
            on_token(chosen)
        if rules.eos_ids:
            stopped = stopped | torch.isin(chosen, eos)
            if (new + 1) % STOP_CHECK_EVERY == 0 and bool(stopped.all()):
                break
        if new + 1 < max_new_tokens:
            logits = step.advance(chosen)
    return _assemble(tokens, prompt_real, records, alternatives, keep_logprobs, model.config.vocab_size)


def _assemble(tokens: Tensor, prompt_real: Tensor, records: list[dict[str, Tensor]],
              alternatives: int, keep_logprobs: bool, vocab_size: int) -> Generation:
    """Stack the steps' records into a Generation: (b) per step -> (b new), (b a) -> (b new a).
    prompt_real (b t): which prompt positions are real."""
    prompt_length = prompt_real.shape[1]
    if not records:  # max_new_tokens=0: the prompt alone
        b, device = tokens.shape[0], tokens.device
        empty = {"scores": torch.zeros(b, 0, device=device), "alive": torch.zeros(b, 0, dtype=torch.bool, device=device),
                 "alternatives": torch.zeros(b, 0, alternatives, dtype=torch.long, device=device),
                 "alternative_probs": torch.zeros(b, 0, alternatives, device=device)}
        empty |= {"token_logprobs": empty["scores"], "entropy": empty["scores"]}
        stacked = empty | ({"step_logprobs": torch.zeros(b, 0, vocab_size, device=device)} if keep_logprobs else {})
    else:
        stacked = {name: torch.stack([record[name] for record in records], dim=1) for name in records[0]}
        # the steps after every row stopped (run until the next stop check) are dropped
        steps = int(stacked["alive"].any(dim=0).sum())
        stacked = {name: value[:, :steps] for name, value in stacked.items()}
        tokens = tokens[:, : prompt_length + steps]
    alive = stacked.pop("alive")
    return Generation(sequences=tokens, prompt_length=prompt_length, attention_mask=torch.cat([prompt_real, alive], dim=1).long(),
                      **stacked)
