"""The language-modelling loss: how surprised the model is by each next token, on average.

Equals transformers' `GPT2LMHeadModel(..., labels=...)` loss when padding is labelled -100 and
position ids come from the mask: the mean of -log p(token t+1 | tokens <= t) over every position
where both tokens are real. Padding predicts nothing and is never predicted.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import real_tokens
from ..model import GPT


def check_gpt(model: object, caller: str) -> GPT:
    """The analysis tools read a minigpt GPT's hook points and config: a GPT, or the GPT that
    `minigpt.fast.optimize` wraps (its `.model`); anything else is named here."""
    inner = getattr(model, "model", None) if isinstance(model, nn.Module) and not isinstance(model, GPT) else model
    if not isinstance(inner, GPT):
        raise ValueError(f"{caller} takes a minigpt GPT (load_gpt2 or GPT(config)), got {type(model).__name__}")
    return inner


def predicted(input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """(b t-1) bool: is token t+1 a real token predicted from a real position t? The tokens the
    loss counts; its denominator is their number."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a (batch, time) tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.shape[1] < 2:
        raise ValueError(f"input_ids has {input_ids.shape[1]} column(s): a loss needs at least two tokens per row")
    real = real_tokens(input_ids, attention_mask)
    counted = real[:, :-1] & real[:, 1:]
    if not bool(counted.any()):
        raise ValueError("no row has two real tokens in a row: there is nothing to predict")
    return counted


def token_losses(model: GPT, input_ids: Tensor, attention_mask: Tensor | None = None,
                 head_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """-log p of each next token (b t-1), 0 where nothing is predicted, and which are predicted (b t-1)."""
    check_gpt(model, "lm_loss")
    counted = predicted(input_ids, attention_mask)  # (b t-1)
    logits = model(input_ids, attention_mask=attention_mask, head_mask=head_mask)  # (b t v)
    logprobs = logits[:, :-1].float().log_softmax(dim=-1)  # position t predicts token t+1
    picked = logprobs.gather(-1, input_ids[:, 1:, None])[..., 0]  # (b t-1): log p of the token that came
    return -torch.where(counted, picked, 0.0), counted


def lm_loss(model: GPT, input_ids: Tensor, attention_mask: Tensor | None = None, head_mask: Tensor | None = None) -> Tensor:
    """Mean next-token negative log-likelihood in nats over real predicted tokens: a scalar,
    differentiable with respect to the parameters and to head_mask."""
    losses, counted = token_losses(model, input_ids, attention_mask, head_mask)
    return losses.sum() / counted.sum()
