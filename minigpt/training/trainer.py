"""The training loop, as a reader expects one (the choices follow GPT-2/GPT-3 and nanoGPT):

- AdamW (Loshchilov & Hutter 2019) with weight decay on matrices only: biases and LayerNorm gains
  are not pulled towards zero;
- the learning rate rises linearly for `warmup` steps, then falls along a cosine to `min_lr`;
- the gradient's global norm is clipped to `clip`;
- `accumulate` micro-batches are summed into one optimizer step (a larger batch in the same memory);
- every `eval_every` steps the held-out loss, over every held-out token;
- a checkpoint holds everything a resumed run needs to continue bit for bit: parameters, AdamW's
  moments, the step, where the data generator is, and torch's random state (dropout).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_choice, check_float, check_int
from ..files import write_atomically
from ..model import GPT
from .batches import TokenWindows


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch: int = 16  # sequences per micro-batch
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


def make_optimizer(model: GPT, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: matrices (linear weights, embeddings) decay, vectors do not."""
    matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": config.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2))


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup to lr, then a cosine down to min_lr at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def next_token_loss(model: GPT, inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean -log p(target) over every position: the batch holds no padding."""
    logits = model(inputs)  # (b t v)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


@torch.no_grad()
def evaluate(model: GPT, windows: TokenWindows, batch: int) -> float:
    """Mean loss in nats per token over every token of `windows`, in order, in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for inputs, targets in windows.in_order(batch):
        total += float(next_token_loss(model, inputs, targets)) * targets.numel()
        count += targets.numel()
    model.train(was_training)
    return total / count


def train(
    model: GPT,
    data: TokenWindows,
    held_out: TokenWindows,
    config: TrainConfig,
    *,
    state_path: Path | None = None,
    resume: bool = False,
    report: Callable[[dict], None] = lambda record: None,
) -> list[dict]:
    """Train `model` in place for config.steps steps; returns the history of evaluations.

    report: called after every step with {"step", "loss", "lr", "tokens_per_s"} and, at an
    evaluation, "held_out" too (the progress bar and log live with the caller).
    state_path: where checkpoints go every config.save_every steps; resume=True starts from it.
    """
    optimizer = make_optimizer(model, config)
    step, history = 0, []
    if resume:
        step, history = load_state(state_path, model, optimizer, data, config)
    autocast = (torch.autocast(model.device.type, dtype=torch.bfloat16) if config.dtype == "bfloat16"
                else contextlib.nullcontext())
    model.train()
    tokens_per_step = config.batch * config.accumulate * data.block
    while step < config.steps:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        total = 0.0
        for _ in range(config.accumulate):
            inputs, targets = data.sample(config.batch)
            with autocast:
                loss = next_token_loss(model, inputs.to(model.device), targets.to(model.device))
            (loss / config.accumulate).backward()  # the gradients of the micro-batches add up to their mean's
            total += loss.item() / config.accumulate
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        record = {"step": step, "loss": total, "lr": learning_rate(step - 1, config),
                  "tokens_per_s": tokens_per_step / (time.perf_counter() - started)}
        if step % config.eval_every == 0 or step == config.steps:
            record["held_out"] = evaluate(model, held_out, config.batch)
            history.append({"step": step, "train": total, "held_out": record["held_out"]})
        report(record)
        if state_path is not None and (step % config.save_every == 0 or step == config.steps):
            save_state(state_path, model, optimizer, data, step, history, config)
    model.eval()
    return history


def save_state(path: Path, model: GPT, optimizer: torch.optim.Optimizer, data: TokenWindows, step: int,
               history: list[dict], config: TrainConfig) -> None:
    """Everything a resumed run needs; written whole or not at all (`write_atomically`), so a run
    stopped while saving never leaves half a checkpoint."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "history": history,
             "data": data.generator.get_state(), "rng": torch.get_rng_state(), "config": asdict(config)}
    write_atomically(path, lambda partial: torch.save(state, partial))


def load_state(path: Path | None, model: GPT, optimizer: torch.optim.Optimizer, data: TokenWindows,
               config: TrainConfig) -> tuple[int, list[dict]]:
    if path is None or not path.is_file():
        raise ValueError(f"cannot resume: no training state at {path}")
    state = torch.load(path, weights_only=True)  # tensors, numbers and lists only: nothing is unpickled
    if state["config"] != asdict(config):
        changed = sorted(k for k in asdict(config) if state["config"].get(k) != asdict(config)[k])
        raise ValueError(f"cannot resume {path}: it was trained with other settings ({', '.join(changed)})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    data.generator.set_state(state["data"])
    torch.set_rng_state(state["rng"])
    return state["step"], state["history"]
