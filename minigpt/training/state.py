"""A resumable training state: everything a run needs to continue bit for bit, saved whole and
loaded only after it is checked against the run that continues it.

The state holds the parameters, AdamW's moments, the step, where the data generator is, and
torch's random state (dropout). It is read with `weights_only=True` (tensors, numbers, lists and
dicts: nothing is unpickled), and checked before anything is loaded into the model: its keys,
its settings against this run's TrainConfig, and every tensor's name and shape. A corrupt,
incomplete or foreign state is one ValueError naming the problem, and the model is untouched.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..checks import few
from ..files import write_atomically

if TYPE_CHECKING:
    from .batches import TokenWindows
    from .trainer import TrainConfig

KEYS = ("model", "optimizer", "step", "history", "data", "rng", "config")


def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, data: TokenWindows, step: int,
               history: list[dict], config: TrainConfig) -> None:
    """Written whole or not at all (`write_atomically`): a run stopped while saving leaves the last one."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "history": history,
             "data": data.generator.get_state(), "rng": torch.get_rng_state(), "config": asdict(config)}
    write_atomically(Path(path), lambda partial: torch.save(state, partial))


def load_state(path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, data: TokenWindows,
               config: TrainConfig) -> tuple[int, list[dict]]:
    """Check the state at `path` against this run, then load it; returns (step, history)."""
    path = Path(path) if path is not None else None
    if path is None or not path.is_file():
        raise ValueError(f"cannot resume: no training state at {path}")
    try:
        state = torch.load(path, weights_only=True)  # tensors, numbers and lists only: nothing is unpickled
    except Exception as err:  # a corrupt or foreign file fails inside torch or pickle in many ways
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot resume from {path}: it is not a training state this loop wrote ({first})") from None
    check_state(state, path, model, optimizer, config)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    data.generator.set_state(state["data"])
    torch.set_rng_state(state["rng"])
    return state["step"], state["history"]


def check_state(state: object, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                config: TrainConfig) -> None:
    """Everything `load_state` will load, checked first: keys, settings, names and shapes."""
    where = f"cannot resume from {path}"
    if not isinstance(state, dict):
        raise ValueError(f"{where}: it holds a {type(state).__name__}, not a training state")
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise ValueError(f"{where}: the state is incomplete, it lacks {', '.join(missing)}")
    settings = asdict(config)
    if not isinstance(state["config"], dict) or state["config"] != settings:
        saved = state["config"] if isinstance(state["config"], dict) else {}
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        raise ValueError(f"cannot resume {path}: it was trained with other settings ({', '.join(changed)})")
    if not isinstance(state["step"], int) or not 0 <= state["step"] <= config.steps or not isinstance(state["history"], list):
        raise ValueError(f"{where}: its step {state['step']!r} is not one of this run's {config.steps}")
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    saved = state["model"]
    if not isinstance(saved, dict) or not all(isinstance(t, torch.Tensor) for t in saved.values()):
        raise ValueError(f"{where}: its 'model' is not a dict of tensors")
    theirs = {name: tuple(t.shape) for name, t in saved.items()}
    misshapen = [f"{k} {list(theirs[k])} (this model: {list(ours[k])})" for k in ours  # in the model's order
                 if k in theirs and ours[k] != theirs[k]]
    if ours.keys() != theirs.keys() or misshapen:
        raise ValueError(f"{where}: it was saved by a model of another shape: missing {few(ours.keys() - theirs.keys())}; "
                         f"unexpected {few(theirs.keys() - ours.keys())}; misshapen {'; '.join(misshapen[:3]) or 'none'}")
    groups = state["optimizer"].get("param_groups") if isinstance(state["optimizer"], dict) else None
    if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups] != [
            len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError(f"{where}: its optimizer state does not match this model's parameters")
    for key in ("data", "rng"):
        if not isinstance(state[key], torch.Tensor) or state[key].dtype != torch.uint8:
            raise ValueError(f"{where}: its '{key}' is not a random generator's state")
