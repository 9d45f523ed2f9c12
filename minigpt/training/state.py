"""A resumable training state: everything a run needs to continue bit for bit, saved whole and
loaded only after it is checked against the run that continues it.

The state holds the parameters, AdamW's moments, the step, where the data generator is, torch's
random state (dropout) on every rank, and how many ranks there were.

A run continues with the same global batch (batch x accumulate x ranks windows a step). Split
the same way, it continues bit for bit. Split otherwise (another number of ranks, or batch traded
for accumulate), it trains on the same windows with the same arithmetic, summed in another order:
equal up to float rounding; that is refused when the model has dropout, whose random masks are
drawn on each rank and cannot be dealt out again.

The state is read with `weights_only=True` (tensors, numbers, lists and dicts: nothing is
unpickled), and checked before anything is loaded into the model: its keys,
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
from .parallel import Ranks

if TYPE_CHECKING:
    from .batches import TokenWindows
    from .trainer import TrainConfig

KEYS = ("model", "optimizer", "step", "history", "data", "rng", "config", "ranks")
SPLIT = ("batch", "accumulate")  # settings a resumed run may change, keeping batch x accumulate x ranks


def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, data: TokenWindows, step: int,
               history: list[dict], config: TrainConfig, ranks: Ranks = Ranks()) -> None:
    """Written by rank 0, whole or not at all (`write_atomically`): a run stopped while saving leaves the
    last one. Every rank calls it: each hands over its random state."""
    rng = ranks.gather(torch.get_rng_state())
    if not ranks.writer:
        return
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "history": history,
             "data": data.generator.get_state(), "rng": rng, "config": asdict(config), "ranks": ranks.count}
    write_atomically(Path(path), lambda partial: torch.save(state, partial))


def load_state(path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, data: TokenWindows,
               config: TrainConfig, ranks: Ranks = Ranks()) -> tuple[int, list[dict]]:
    """Check the state at `path` against this run, then load it; returns (step, history)."""
    path = Path(path) if path is not None else None
    if path is None or not path.is_file():
        raise ValueError(f"cannot resume: no training state at {path}")
    try:
        state = torch.load(path, weights_only=True)  # tensors, numbers and lists only: nothing is unpickled
    except Exception as err:  # a corrupt or foreign file fails inside torch or pickle in many ways
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot resume from {path}: it is not a training state this loop wrote ({first})") from None
    check_state(state, path, model, optimizer, config, ranks)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    data.generator.set_state(state["data"])
    same_split = state["ranks"] == ranks.count
    torch.set_rng_state(state["rng"][ranks.rank if same_split else 0])  # otherwise no dropout reads it
    return state["step"], state["history"]


def check_state(state: object, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                config: TrainConfig, ranks: Ranks = Ranks()) -> None:
    """Everything `load_state` will load, checked first: keys, settings, names and shapes."""
    where = f"cannot resume from {path}"
    if not isinstance(state, dict):
        raise ValueError(f"{where}: it holds a {type(state).__name__}, not a training state")
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise ValueError(f"{where}: the state is incomplete, it lacks {', '.join(missing)}")
    settings = asdict(config)
    saved = state["config"] if isinstance(state["config"], dict) else {}
    if not isinstance(state["ranks"], int) or not isinstance(state["rng"], list) or len(state["rng"]) != state["ranks"]:
        raise ValueError(f"{where}: its 'ranks' and 'rng' do not match (a random state for each rank)")
    changed = sorted(k for k in settings if saved.get(k) != settings[k] and k not in SPLIT)
    if changed:
        raise ValueError(f"cannot resume {path}: it was trained with other settings ({', '.join(changed)})")
    check_split(path, saved, state["ranks"], settings, ranks.count, model)
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
    for value in (state["data"], *state["rng"]):
        if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
            raise ValueError(f"{where}: its 'data' or 'rng' is not a random generator's state")


def check_split(path: Path, saved: dict, saved_ranks: int, settings: dict, ranks: int, model: nn.Module) -> None:
    """The global batch must stay; how it is split may change only where no dropout draws masks per rank."""
    before = (saved.get("batch"), saved.get("accumulate"), saved_ranks)
    now = (settings["batch"], settings["accumulate"], ranks)
    if before == now:
        return
    if not all(isinstance(n, int) for n in before) or before[0] * before[1] * before[2] != now[0] * now[1] * now[2]:
        raise ValueError(f"cannot resume {path}: its global batch was batch {before[0]} x accumulate {before[1]} x "
                         f"{before[2]} ranks; choose --batch, --accumulate and the ranks so that their product is the same")
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        raise ValueError(f"cannot resume {path} split differently (it ran batch {before[0]} x accumulate {before[1]} x "
                         f"{before[2]} ranks): the model has dropout, whose random masks cannot be continued exactly "
                         "on another split; resume it as it ran")
