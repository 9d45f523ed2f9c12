"""Data parallelism: the same model on several processes, each on its own share of every batch.

`torchrun --nproc_per_node N script.py` starts N copies of a script and tells each its RANK (0 ..
WORLD_SIZE-1, across machines with --nnodes) and LOCAL_RANK (on this machine). `Ranks.from_env`
reads them and joins the processes into one group: gloo on CPUs, NCCL on CUDA GPUs, one GPU per
process. PyTorch's DistributedDataParallel (Li et al. 2020) then averages the gradients across the
group during backward, so every rank's optimizer takes the same step and the copies stay equal;
nanoGPT's train.py does the same.

`Ranks()` is one process on its own: every call below is then a no-op, and the loop reads the same.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Ranks:
    rank: int = 0  # this process, 0 .. count - 1; rank 0 prints and writes
    count: int = 1  # processes in the group (torchrun's WORLD_SIZE)
    local_rank: int = 0  # this process on its machine: which GPU it drives
    local_count: int = 1  # processes on this machine (torchrun's LOCAL_WORLD_SIZE)

    @classmethod
    def from_env(cls, device_type: str) -> Ranks:
        """The group torchrun started this process in, joined; one process alone without torchrun."""
        if "WORLD_SIZE" not in os.environ:
            return cls()
        ranks = cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]),
                    int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
        if ranks.count > 1 and not dist.is_initialized():
            if device_type == "cuda":
                torch.cuda.set_device(ranks.local_rank)
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return ranks

    @property
    def writer(self) -> bool:
        return self.rank == 0

    @property
    def machines(self) -> bool:
        """Whether the processes span several machines (torchrun --nnodes)."""
        return self.count > self.local_count

    def device(self, device: str) -> str:
        """Each process drives its own GPU: cuda:LOCAL_RANK."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.count > 1 else device

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP copies rank 0's parameters to every rank, then averages gradients in backward."""
        return DistributedDataParallel(module) if self.count > 1 else module

    def accumulating(self, module: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Gradients are averaged across ranks only on an optimizer step's last micro-batch."""
        return module.no_sync() if self.count > 1 and not last else contextlib.nullcontext()

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks."""
        if self.count == 1:
            return list(values)
        device = f"cuda:{self.local_rank}" if dist.get_backend() == "nccl" else "cpu"  # NCCL sums on GPUs only
        total = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.tolist()

    def gather(self, value: object) -> list[object]:
        """Every rank's value, in rank order, on every rank."""
        if self.count == 1:
            return [value]
        values: list[object] = [None] * self.count
        dist.all_gather_object(values, value)
        return values

    def agree(self, value: object) -> object:
        """Rank 0's value, on every rank (a run directory named by the time, say)."""
        return self.gather(value)[0]

    def on_writer(self, job: Callable[[], object]) -> object:
        """job() run by rank 0 alone (it writes files the others then read); its result, or the
        ValueError it raised, on every rank, so that no rank waits for one that has given up."""
        outcome = None
        if self.writer:
            try:
                outcome = (job(), None)
            except ValueError as err:
                outcome = (None, str(err))
        result, error = self.agree(outcome)
        if error is not None:
            raise ValueError(error)
        return result

    def close(self) -> None:
        if self.count > 1 and dist.is_initialized():
            dist.destroy_process_group()
