"""What a training step minimises: the mean -log p(next token) over every position of a batch.

`NextTokenLoss` is the one the loop uses for our GPT. Its output head never forms the logits
whole: a batch of 16 x 256 positions over 2048 tokens is 33 MB of float32 logits, written,
softmaxed, read back and differentiated, and on a CPU that traffic, not the arithmetic, was a fifth
of a step. `head_loss` takes the rows a chunk at a time instead and makes each chunk's gradients
while its logits are still in the cache, using the textbook fact that the gradient of
cross-entropy with respect to the logits is softmax(logits) - onehot(target). The answer and the
gradients are those of `F.cross_entropy(hidden @ weightᵀ, targets)` (tests/test_training.py).

`LogitsLoss` is that plain form, for any model that returns logits (transformers' GPT2LMHeadModel
in scripts/bench_train.py). Either is a module, so DistributedDataParallel and torch.compile wrap it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHUNK = 512  # rows of logits at a time: 512 x 2048 float32 is 4 MB, inside this CPU's L3


class NextTokenLoss(nn.Module):
    """(inputs, targets), both (b t), the targets the inputs moved one on -> the mean loss. The
    batch holds no padding and no cache, as training windows do, so every position is real."""

    def __init__(self, model: nn.Module, chunk: int = CHUNK):
        super().__init__()
        self.model, self.chunk = model, chunk

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        hidden = self.model.transform(inputs, torch.ones_like(inputs, dtype=torch.bool))  # (b t e)
        return head_loss(hidden.flatten(0, 1), self.model.wte.weight, targets.flatten(), self.chunk)


class LogitsLoss(nn.Module):
    """The same loss from a model's logits (b t v), formed whole."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        logits = self.model(inputs)  # (b t v)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def head_loss(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int = CHUNK) -> Tensor:
    """mean_i -log softmax(hidden_i weightᵀ)[targets_i]: hidden (n e), weight (v e), targets (n).
    Under autocast the products run in its dtype (bfloat16), the softmax in float32, as autocast would."""
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype
    return ChunkedHeadLoss.apply(hidden, weight, targets, chunk, dtype)


class ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int, dtype: torch.dtype) -> Tensor:
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes below are chosen by hand
            w = weight.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            d_hidden = torch.empty(hidden.shape, dtype=dtype, device=hidden.device)  # (n e)
            d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # (v e)
            for start in range(0, len(hidden), chunk):
                h, y = hidden[start : start + chunk].to(dtype), targets[start : start + chunk]
                logits = (h @ w.T).float()  # (c v)
                log_z = logits.logsumexp(dim=-1)  # (c): log of the softmax's denominator
                total += (log_z - logits.gather(1, y[:, None])[:, 0]).sum()
                grad = logits.sub_(log_z[:, None]).exp_()  # softmax (c v), in place of the logits
                grad[torch.arange(len(y), device=y.device), y] -= 1  # minus the one-hot target
                grad = grad.to(dtype)
                d_hidden[start : start + chunk] = grad @ w  # (c v) (v e) -> (c e)
                d_weight += (grad.T @ h).float()  # (v c) (c e) -> (v e), summed over the chunks
        ctx.save_for_backward(d_hidden, d_weight)
        ctx.hidden_dtype, ctx.count = hidden.dtype, len(hidden)
        return total / len(hidden)

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        d_hidden, d_weight = ctx.saved_tensors
        scale = grad_loss / ctx.count  # the loss is a mean over the rows
        return (d_hidden * scale).to(ctx.hidden_dtype), d_weight * scale, None, None, None
