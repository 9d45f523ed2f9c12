"""Where an experiment's runs train: one after another in this process, or as Ray tasks.

The runs of a grid are independent (each its own model, data order and files), so the grid is the
textbook case for a distributed engine. `RayWorkers` makes each run a Ray task asking for the CPUs
it uses: on this machine Ray starts a local cluster of its cores (nothing to set up); given an
address (or RAY_ADDRESS) it joins an existing cluster, whose nodes must see the experiment's
directory at the same path (a shared filesystem), since each run writes its files there.
`InProcess` trains them one after another here (`--workers 1`).

Both are called the same way, `workers(train, runs, report)`, and yield `(run, outcome)` as each
run finishes, in the order they finish: `outcome` is what `train(run, report, where)` returned,
or a `Failed` saying why (a NaN loss, a damaged checkpoint, a killed worker); the other runs go on.
`where` names the process (Ray: the node) that trained it. A Ray run takes one thread by default,
so that the grid fills every core of a cluster and a run's result does not depend on its node's
cores. On 2 cores that gained nothing: two runs side by side at one thread each took as long as
one after the other at two threads (README: the grid's wall-clock against --workers 1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..checks import check_int


@dataclass(frozen=True)
class Failed:
    """A run that raised: the exception's type and message."""

    error: str

    @classmethod
    def of(cls, err: BaseException) -> Failed:
        return cls(f"{type(err).__name__}: {err}")


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set for a run, and put back after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class InProcess:
    """Each run in this process, one after another, with `threads` torch threads (None: as set)."""

    def __init__(self, threads: int | None = None):
        self.threads = None if threads is None else check_int("threads", threads, 1)

    def __call__(self, train: Callable, runs: list, report: Callable) -> Iterator[tuple[object, object]]:
        where = f"{socket.gethostname()} (in process)"
        for run in runs:
            try:
                with torch_threads(self.threads):
                    outcome = train(run, report, where)
            except Exception as err:  # a run's own failure; KeyboardInterrupt stops the grid
                outcome = Failed.of(err)
            yield run, outcome


def _train_in_worker(train: Callable, run: object, threads: int, steps: object) -> object:
    """The body of a Ray task: train one run with the task's threads, each step's record put on the
    `steps` queue for the driver's report, naming the node it ran on."""
    import ray

    torch.set_num_threads(threads)
    return train(run, lambda *step: steps.put_nowait(step), f"ray node {ray.get_runtime_context().get_node_id()[:12]}")


class RayWorkers:
    """Each run a Ray task of `threads` CPUs, at most `at_once` in flight (None: as many as the
    cluster's CPUs fit). address: a cluster's ("ray://..." or "host:port"); None: RAY_ADDRESS if
    set, else a local cluster of this machine's cores, started for the grid and stopped after it.
    A Ray that is already initialised in this process (a notebook's) is used as it is.
    Each step's record comes back through a Ray queue, so report() draws progress here, as it
    does for runs in this process."""

    def __init__(self, address: str | None = None, threads: int = 1, at_once: int | None = None):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"address must be a Ray cluster's address such as 'host:6379' or None, got {address!r:.40}")
        self.address = address
        self.threads = check_int("threads", threads, 1)
        self.at_once = None if at_once is None else check_int("at_once", at_once, 1)

    @property
    def target(self) -> str:
        """The cluster `ray.init` is given: the address, else RAY_ADDRESS, else "local" (not None:
        Ray's None would join whatever cluster this machine started last, `ray start` or a test's,
        where this grid's default is a Ray of its own)."""
        return self.address or os.environ.get("RAY_ADDRESS") or "local"

    def __call__(self, train: Callable, runs: list, report: Callable) -> Iterator[tuple[object, object]]:
        try:
            import ray
        except ImportError:
            raise ValueError("running the grid on Ray needs ray: pip install -e '.[experiments]' "
                             "(or train the runs one after another in this process: --workers 1)") from None
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.target, include_dashboard=False, logging_level=logging.WARNING)
        from ray.util.queue import Queue

        task = ray.remote(num_cpus=self.threads)(_train_in_worker)
        steps = Queue()
        waiting, pending = list(runs), {}
        try:
            while waiting or pending:
                while waiting and (self.at_once is None or len(pending) < self.at_once):
                    run = waiting.pop(0)
                    pending[task.remote(train, run, self.threads, steps)] = run
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for step in steps.get_nowait_batch(steps.qsize()):
                    report(*step)
                if not ready:
                    continue
                done = ready[0]
                run = pending.pop(done)
                try:
                    outcome = ray.get(done)
                except ray.exceptions.RayTaskError as err:  # the run raised: its own exception, not Ray's wrapper
                    outcome = Failed.of(err.cause) if err.cause is not None else Failed.of(err)
                except ray.exceptions.RayError as err:  # its worker or node died (retried as Ray's defaults say)
                    outcome = Failed.of(err)
                yield run, outcome
        finally:
            for ref in pending:  # interrupted: what is still training stops; its checkpoint resumes it
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()
