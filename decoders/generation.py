"""What a decoder returns (`Generation`), the checks every decoder makes on its inputs, and
`sequence_logprob`, log p(continuation | prompt) with gradients.

Axes: n returned rows, b prompts, t tokens, v vocabulary, a alternatives kept per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from minigpt.model import check_token_ids

ALTERNATIVES = 5  # how many of the most likely tokens each step remembers


@dataclass
class Generation:
    sequences: Tensor  # (n, prompt + new): rows that finished early are padded with pad_token_id
    prompt_length: int  # columns of `sequences` that are the (left-padded) prompt
    attention_mask: Tensor  # (n, prompt + new): 1 for real tokens (prompt, new tokens, the EOS)
    scores: Tensor  # (n, new): processed log-probability of each chosen token; 0 once a row finished
    token_logprobs: Tensor  # (n, new): the model's own (unprocessed) log-probability of each chosen token
    entropy: Tensor  # (n, new): entropy in nats of the processed distribution the token was chosen from
    alternatives: Tensor  # (n, new, a): the a most likely tokens of that distribution
    alternative_probs: Tensor  # (n, new, a): and their probabilities
    sequence_scores: Tensor | None = None  # (n,) beam search: sum(scores) / new_length ** length_penalty

    @property
    def new_tokens(self) -> Tensor:
        return self.sequences[:, self.prompt_length :]

    @property
    def new_lengths(self) -> Tensor:
        """(n,) how many tokens each row generated, EOS included."""
        return self.attention_mask[:, self.prompt_length :].sum(dim=1)

    def choices(self, row: int = 0, decode=None) -> str:
        """The "choices per step" table of one row: the chosen token, then the alternatives with
        their probabilities. `decode` (ids -> str), e.g. `tokenizer.decode`, shows text."""
        show = (lambda i: repr(decode([i]))) if decode else str
        lines = [f"{'step':>4}  {'chosen':<16} {'entropy':>7}  alternatives (probability)"]
        for step in range(int(self.new_lengths[row])):
            chosen = int(self.new_tokens[row, step])
            alts = "  ".join(
                f"{show(int(i))} {float(p):.3g}"
                for i, p in zip(self.alternatives[row, step], self.alternative_probs[row, step])
            )
            lines.append(f"{step:>4}  {show(chosen):<16} {float(self.entropy[row, step]):>7.3f}  {alts}")
        return "\n".join(lines)


def summarize(logprobs: Tensor, k: int = ALTERNATIVES) -> tuple[Tensor, Tensor, Tensor]:
    """(rows v) log-probabilities -> entropy (rows), top-k ids (rows k), their probabilities (rows k)."""
    probs = logprobs.exp()
    # a removed token has p = 0 and log p = -inf; clamping makes its term 0 * (finite) = 0, not NaN
    entropy = -(probs * logprobs.clamp(min=torch.finfo(logprobs.dtype).min)).sum(dim=-1)
    top = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
    return entropy, top.indices, top.values.exp()


def check_prompt(model, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int) -> Tensor:
    """Validate a prompt batch; returns its attention mask as bool (b t)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a (batch, time) tensor of token ids")
    if input_ids.numel() == 0:
        raise ValueError(f"the prompt is empty (input_ids has shape {tuple(input_ids.shape)}): give at least one token")
    context = model.config.n_positions
    check_token_ids(input_ids, model.config.vocab_size)
    if input_ids.shape[1] + max_new_tokens > context:
        raise ValueError(
            f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"context of {context} positions; shorten one (nothing is truncated for you)"
        )
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}")
    mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
    if not bool(mask[:, -1].all()):
        raise ValueError("attention_mask must be left-padded: every row's last column must be a real token")
    return mask


def check_options(
    model,
    *,
    eos_token_id: int | None,
    pad_token_id: int | None,
    min_new_tokens: int,
    no_repeat_ngram_size: int,
    repetition_penalty: float,
) -> int:
    """Validate the options all decoders share; returns the pad id (the EOS id unless given)."""
    vocab = model.config.vocab_size
    for name, value in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if value is not None and not 0 <= value < vocab:
            raise ValueError(f"{name}={value} is outside the vocabulary [0, {vocab})")
    if min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be >= 0, got {min_new_tokens}")
    if no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 is off), got {no_repeat_ngram_size}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 is off), got {repetition_penalty}")
    if pad_token_id is not None:
        return pad_token_id
    return eos_token_id if eos_token_id is not None else 0


def sequence_logprob(model, sequences: Tensor, prompt_length: int, attention_mask: Tensor | None = None) -> Tensor:
    """log p(sequences[:, prompt_length:] | prompt) under `model`, (n,), differentiable.

    attention_mask (n t) marks real tokens; pass `Generation.attention_mask` so that the padding
    after an EOS does not count. Policy-gradient methods need exactly this with gradients.
    """
    if not 0 < prompt_length < sequences.shape[1]:
        raise ValueError(f"prompt_length must be in [1, {sequences.shape[1] - 1}] for sequences of length {sequences.shape[1]}")
    mask = torch.ones_like(sequences) if attention_mask is None else attention_mask.to(sequences.device)
    logits = model(sequences, attention_mask=mask)  # (n t v)
    logprobs = logits[:, prompt_length - 1 : -1].float().log_softmax(dim=-1)  # predictions of the new tokens
    targets = sequences[:, prompt_length:]
    picked = logprobs.gather(-1, targets[..., None])[..., 0]  # (n new)
    return (picked * mask[:, prompt_length:]).sum(dim=1)
