"""The training loop, as a reader expects one (the choices follow GPT-2/GPT-3 and nanoGPT):

- AdamW (Loshchilov & Hutter 2019) with weight decay on matrices only: biases and LayerNorm gains
  are not pulled towards zero;
- the learning rate rises linearly for `warmup` steps, then falls along a cosine to `min_lr`;
- the gradient's global norm is clipped to `clip`;
- `accumulate` micro-batches are summed into one optimizer step (a larger batch in the same memory);
- under torchrun, each of `ranks` processes trains on its share of every global batch and
  DistributedDataParallel averages the gradients (`parallel.py`); rank 0 evaluates its share too,
  prints and writes;
- the loss is `objective.py`'s, whose output head never forms the logits whole; `compile=True`
  hands the step's forward and backward to torch.compile, which fuses the small operations;
- every `eval_every` steps the held-out loss, over every held-out token;
- a checkpoint (`state.py`) holds everything a resumed run needs to continue bit for bit: parameters, AdamW's
  moments, the step, where the data generator is, and torch's random state (dropout).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..checks import check_choice, check_float, check_fits_in_memory, check_int
from ..model import GPT
from .batches import TokenWindows
from .objective import LogitsLoss, NextTokenLoss
from .parallel import Ranks
from .state import load_state, save_state


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch: int = 16  # sequences per micro-batch, on each rank
    accumulate: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.95
    clip: float = 1.0
    eval_every: int = 250
    save_every: int = 250
    dtype: str = "float32"  # or "bfloat16": autocast the forward, keep the parameters in float32
    compile: bool = False  # torch.compile the loss's forward and backward (a few seconds to start)

    def __post_init__(self) -> None:
        """Checked where it is made, so a run never trains nonsense (a negative clip is gradient
        ascent; a learning rate of 1e30 gives NaN) and a script fails before writing anything."""
        for name in ("steps", "batch", "accumulate", "eval_every", "save_every"):
            check_int(name, getattr(self, name), 1)
        check_int("warmup", self.warmup, 0)
        check_float("lr", self.lr, 0, 10, open_low=True)  # above ~1 AdamW's steps are as large as the weights
        check_float("min_lr", self.min_lr, 0, self.lr)
        check_float("weight_decay", self.weight_decay, 0, 1, open_high=True)
        check_float("beta2", self.beta2, 0, 1, open_low=True, open_high=True)
        check_float("clip", self.clip, 0, open_low=True)
        check_choice("dtype", self.dtype, ("float32", "bfloat16"))
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")


def make_optimizer(model: GPT, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: matrices (linear weights, embeddings) decay, vectors do not."""
    matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": config.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    # fused: one kernel updates every tensor of a group, rather than a dozen small operations each
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2), fused=True)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup to lr, then a cosine down to min_lr at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def evaluate(model: GPT, windows: TokenWindows, batch: int, ranks: Ranks = Ranks()) -> float:
    """Mean loss in nats per token over every token of `windows`, in order, in eval mode; with
    several ranks, each takes its share and the sums are added up."""
    was_training = model.training
    model.eval()
    loss = LogitsLoss(model)
    total, count = 0.0, 0
    for inputs, targets in windows.in_order(batch, ranks.rank, ranks.count):
        total += float(loss(inputs.to(model.device), targets.to(model.device))) * targets.numel()
        count += targets.numel()
    model.train(was_training)
    total, count = ranks.sum(total, count)
    return total / count


def check_training(model: nn.Module, data: object, held_out: object, config: object, state_path: object,
                   resume: object, report: object, ranks: object, objective: object) -> None:
    """train's arguments, before any step: the model must be trainable in float32 (bfloat16 is
    autocast, not stored), and a batch's logits must fit in memory."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config") or not hasattr(model, "device"):
        raise ValueError(f"train takes a model with a config and a device (a minigpt GPT), got {type(model).__name__}")
    for name, value in (("data", data), ("held_out", held_out)):
        if not isinstance(value, TokenWindows):
            raise ValueError(f"{name} must be TokenWindows, got {type(value).__name__}")
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(resume, bool) or not callable(report) or not callable(objective):
        raise ValueError("resume must be True or False, report a function of one record and objective a loss "
                         "module's class (NextTokenLoss)")
    if not isinstance(ranks, Ranks):
        raise ValueError(f"ranks must be a Ranks, got {type(ranks).__name__}")
    if state_path is not None and not isinstance(state_path, (str, Path)):
        raise ValueError(f"state_path must be a path or None, got {type(state_path).__name__}")
    if resume and state_path is None:
        raise ValueError("resume=True needs the state_path to resume from")
    parameters = list(model.parameters())
    if not any(p.requires_grad for p in parameters):
        raise ValueError("the model has no trainable parameters: a model made fast by minigpt.fast.optimize is "
                         "for inference only; load it again to train it")
    stored = {p.dtype for p in parameters} - {torch.float32}
    if stored:
        raise ValueError(f"train keeps the parameters in float32 (dtype='bfloat16' autocasts the forward pass), but the "
                         f"model holds {', '.join(map(str, stored))}; call model.float() first")
    vocab = model.config.vocab_size
    # the held-out evaluation forms a batch's logits whole, and a float32 copy (a step, a chunk at a time)
    check_fits_in_memory(2 * config.batch * data.block * vocab * 4,
                         f"a training batch of {config.batch} x {data.block} tokens over {vocab} logits", model.device)


def train(
    model: GPT,
    data: TokenWindows,
    held_out: TokenWindows,
    config: TrainConfig,
    *,
    state_path: Path | None = None,
    resume: bool = False,
    report: Callable[[dict], None] = lambda record: None,
    ranks: Ranks = Ranks(),
    objective: Callable[[nn.Module], nn.Module] = NextTokenLoss,
) -> list[dict]:
    """Train `model` in place for config.steps steps; returns the history of evaluations.

    report: called after every step with {"step", "loss", "lr", "tokens_per_s"} and, at an
    evaluation, "held_out" too (the progress bar and log live with the caller).
    state_path: where checkpoints go every config.save_every steps; resume=True starts from it.
    ranks: this process's place among torchrun's (`Ranks.from_env`); one process by default.
    objective: makes the loss module from the model (LogitsLoss for a model that only returns logits).
    """
    check_training(model, data, held_out, config, state_path, resume, report, ranks, objective)
    optimizer = make_optimizer(model, config)
    step, history = 0, []
    if ranks.count > 1:  # the same initial weights everywhere, but each rank its own dropout masks
        torch.manual_seed(torch.initial_seed() + ranks.rank)
    if resume:
        step, history = load_state(state_path, model, optimizer, data, config, ranks)
    loss_module = ranks.wrap(objective(model))
    loss_of = torch.compile(loss_module) if config.compile else loss_module
    autocast = (torch.autocast(model.device.type, dtype=torch.bfloat16) if config.dtype == "bfloat16"
                else contextlib.nullcontext())
    model.train()
    tokens_per_step = config.batch * config.accumulate * data.block * ranks.count
    while step < config.steps:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        total = 0.0
        batches = data.step(config.batch, config.accumulate, ranks.rank, ranks.count)
        for i, (inputs, targets) in enumerate(batches):
            with ranks.accumulating(loss_module, last=i == len(batches) - 1):
                with autocast:
                    loss = loss_of(inputs.to(model.device), targets.to(model.device))
                (loss / config.accumulate).backward()  # the gradients of the micro-batches add up to their mean's
            total += loss.item() / config.accumulate
        total = ranks.sum(total)[0] / ranks.count  # the mean over the global batch
        if not math.isfinite(total):  # diverged: every later step would be NaN too
            raise ValueError(f"the training loss became {total} at step {step + 1} (learning rate "
                             f"{learning_rate(step, config):.3g}); lower lr or raise warmup")
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        record = {"step": step, "loss": total, "lr": learning_rate(step - 1, config),
                  "tokens_per_s": tokens_per_step / (time.perf_counter() - started)}
        if step % config.eval_every == 0 or step == config.steps:
            record["held_out"] = evaluate(model, held_out, config.batch, ranks)
            history.append({"step": step, "train": total, "held_out": record["held_out"]})
        report(record)
        if state_path is not None and (step % config.save_every == 0 or step == config.steps):
            save_state(state_path, model, optimizer, data, step, history, config, ranks)
    model.eval()
    return history
