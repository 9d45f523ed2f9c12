"""What a decoder returns (`Generation`), the checks every decoder makes on its inputs, and
`sequence_logprob`, log p(continuation | prompt) with gradients.

Axes: b rows of the result (prompts, times num_return_sequences), t positions, new generated
positions, v vocabulary, a alternatives kept per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from minigpt.checks import check_int, check_token_ids, real_tokens
from minigpt.config import GPTConfig
from minigpt.kv_cache import KVCache

if TYPE_CHECKING:
    from .records import BeamTree


@dataclass
class Generation:
    """What every decoder returns. `scores` are what the search ranked by (the processed
    log-probabilities: after repetition penalty, n-gram blocking, temperature, top-k ...);
    `token_logprobs` are the model's own log-probabilities of the same tokens, what
    `sequence_logprob` sums. transformers' `compute_transition_scores` gives the first."""

    sequences: Tensor  # (b, prompt + new): rows that stopped early are padded with pad_token_id
    prompt_length: int  # columns of `sequences` that are the (left-padded) prompt
    attention_mask: Tensor  # (b, prompt + new): 1 for real tokens (prompt, new tokens, the EOS)
    scores: Tensor  # (b, new): processed log-probability of each chosen token; 0 once a row stopped
    token_logprobs: Tensor  # (b, new): the model's own (unprocessed) log-probability of each chosen token
    entropy: Tensor  # (b, new): entropy in nats of the processed distribution the token was chosen from
    alternatives: Tensor  # (b, new, a): the a most likely tokens of that distribution; -1 where fewer remained
    alternative_probs: Tensor  # (b, new, a): and their probabilities (0 where the id is -1)
    sequence_scores: Tensor | None = None  # (b,) beam search: sum(scores) / new_length ** length_penalty
    # (b, new, v) with keep_logprobs=True: the whole processed log-probability row of each step, the
    # distribution the token was chosen from (P(EOS) per step, sums to 1, without a second pass)
    step_logprobs: Tensor | None = None
    # beam search with keep_tree=True: every candidate of every step (records.BeamTree), and each
    # returned row's path through it, (b, new): its candidate's index at each step (-1 past its end)
    tree: BeamTree | None = None
    paths: Tensor | None = None
    # speculative decoding: per row (b,), the draft's guesses and how many of them the model accepted
    proposed: Tensor | None = None
    accepted: Tensor | None = None

    @property
    def new_tokens(self) -> Tensor:
        return self.sequences[:, self.prompt_length :]

    @property
    def new_lengths(self) -> Tensor:
        """(b,) how many tokens each row generated, EOS included."""
        return self.attention_mask[:, self.prompt_length :].sum(dim=1)

    def choices(self, row: int = 0, decode=None) -> str:
        """The "choices per step" table of one row: the chosen token, then the alternatives with
        their probabilities. `decode` (ids -> str), e.g. `tokenizer.decode`, shows text."""
        check_int("row", row, 0, self.sequences.shape[0] - 1)
        check_callback("decode", decode)
        show = (lambda i: repr(decode([i]))) if decode else str
        lines = [f"{'step':>4}  {'chosen':<16} {'entropy':>7}  alternatives (probability)"]
        for step in range(int(self.new_lengths[row])):
            chosen = int(self.new_tokens[row, step])
            alts = "  ".join(
                f"{show(int(i))} {float(p):.3g}"
                for i, p in zip(self.alternatives[row, step], self.alternative_probs[row, step])
                if i >= 0  # -1: a processor removed every other token
            )
            lines.append(f"{step:>4}  {show(chosen):<16} {float(self.entropy[row, step]):>7.3f}  {alts}")
        return "\n".join(lines)


@runtime_checkable
class DecoderModel(Protocol):
    """What every decoder calls on its model; `minigpt.GPT` is one (so is any GPT built with
    another block, or made fast by `minigpt.fast`)."""

    config: GPTConfig  # vocab_size and n_positions bound the ids and lengths; the cache's shape
    device: torch.device
    dtype: torch.dtype

    def check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None
                     ) -> Tensor:
        """The checks of the forward pass alone; returns which new positions hold real tokens (b t)."""

    def transform(self, input_ids: Tensor, real: Tensor, cache: KVCache | None = None) -> Tensor:
        """The unchecked forward pass up to the final LayerNorm: ids (b t) -> (b t e), filling `cache`."""

    def head(self, hidden: Tensor) -> Tensor:
        """(... e) -> logits (... v)."""

    def new_cache(self, batch: int, max_length: int) -> KVCache:
        """An empty cache for `batch` rows of up to max_length positions."""

    def next_logits(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """Unchecked one-token step: tokens (b) -> the logits that follow (b v), the cache advanced."""


def check_model(model) -> None:
    if not isinstance(model, DecoderModel):
        raise ValueError(f"model must be a minigpt GPT (load_gpt2 or GPT(config)) or follow decoders.DecoderModel, "
                         f"got {type(model).__name__}")


def real_prompt_tokens(model, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int) -> Tensor:
    """Check a prompt batch for decoding; returns which of its positions hold real tokens (b t)."""
    check_model(model)
    check_int("max_new_tokens", max_new_tokens, low=0)
    real = model.check_inputs(input_ids, attention_mask)  # the model's own checks of ids and mask
    context = model.config.n_positions
    if input_ids.shape[1] + max_new_tokens > context:
        raise ValueError(
            f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"context of {context} positions; shorten one (nothing is truncated for you)"
        )
    if not bool(real[:, -1].all()):
        raise ValueError("attention_mask must be left-padded: every row's last column must be a real token")
    return real


def prefill(model: DecoderModel, input_ids: Tensor, real: Tensor, cache: KVCache) -> Tensor:
    """The prompt (b t), already checked (`real_prompt_tokens`), through the model once: its keys and
    values go into `cache`; returns the logits (b v) that follow its last token."""
    return model.head(model.transform(input_ids, real, cache)[:, -1:])[:, -1]


def repeat_rows(rows: Tensor, times: int, name: str) -> Tensor:
    """(b t) -> ((b times) t), each row `times` times in a row, once `rows` is checked to be a tensor."""
    if not isinstance(rows, Tensor) or rows.dim() != 2:
        raise ValueError(f"{name} must be a (batch, time) tensor, got {type(rows).__name__}")
    return rows.repeat_interleave(times, dim=0)


def check_callback(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise ValueError(f"{name} must be a function or None, got {type(value).__name__}")


def sequence_logprob(model, sequences: Tensor, prompt_length: int, attention_mask: Tensor | None = None) -> Tensor:
    """log p(sequences[:, prompt_length:] | prompt) under `model`, (b,), differentiable.

    attention_mask (b t) marks real tokens; pass `Generation.attention_mask` so that the padding
    after an EOS does not count. Policy-gradient methods need exactly this with gradients.
    """
    check_model(model)
    check_token_ids(sequences, model.config.vocab_size, "sequences")  # before the model does: an error names `sequences`
    check_int("prompt_length", prompt_length, low=1)
    if prompt_length >= sequences.shape[1]:
        raise ValueError(f"sequences has {sequences.shape[1]} columns, so a prompt of prompt_length={prompt_length} "
                         "leaves no continuation to score")
    real = real_tokens(sequences, attention_mask)  # (b t)
    logits = model(sequences, attention_mask=real)  # (b t v)
    logprobs = logits[:, prompt_length - 1 : -1].float().log_softmax(dim=-1)  # predictions of the new tokens
    targets = sequences[:, prompt_length:]
    picked = logprobs.gather(-1, targets[..., None])[..., 0]  # (b new)
    total = (picked * real[:, prompt_length:]).sum(dim=1)
    if torch.is_grad_enabled() and not total.requires_grad:  # no weight of the model takes a gradient
        return NoGradient.apply(total, torch.zeros((), requires_grad=True))
    return total


class NoGradient(torch.autograd.Function):
    """A score with no graph behind it (the model's weights are packed for inference, or frozen):
    the value passes through, and a backward pass says why there is no gradient instead of
    torch's "does not require grad"."""

    @staticmethod
    def forward(ctx, value: Tensor, anchor: Tensor) -> Tensor:  # anchor: what makes autograd call backward
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        raise ValueError("sequence_logprob has no gradient here: no weight of the model requires one. An optimized "
                         "model (minigpt.fast) has its weights packed for inference: take gradients on the model "
                         "as loaded; a frozen model needs requires_grad_() on what should learn")
