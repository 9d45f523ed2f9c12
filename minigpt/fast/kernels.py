"""Which kernel multiplies how many rows, chosen by timing the candidates on this machine.

Each fast module (packed.py, int8.py) can multiply by its weight matrix with several kernels:
rows.cpp, oneDNN, PyTorch's own `F.linear`, PyTorch's product on the weights widened to float32.
Every candidate of a format computes the same numbers (the format's, rows.py), summed in other
orders, so the choice changes the speed and never the tokens (tests/test_kernels.py forces each).
Which is fastest depends on the CPU (its vector units, caches, memory bandwidth), the matrix's
shape and the number of rows: rows.cpp streams the weights for one or two rows, the libraries'
blocked kernels reuse each loaded weight across many. Only the kernels this CPU runs are
candidates (cpu.py); a constant measured on one CPU is wrong on the next, so `choose` times them:

- for each row count in ROWS, every candidate multiplies that many rows by every matrix of the
  model, in the model's order, so that each weight comes from memory as in a real step (taken
  together the weights are many times the caches) and not from a cache warmed by the last call;
  the candidates take turns (`take_turns`, which fused.py's step timing uses too), a warm-up
  pass first, then REPEATS timed passes;
- per kind of matrix (format, in, out: the 12 layers' c_attn are one kind) and row count, the
  candidate with the least time over its passes wins (the least, not the median: another process
  on the CPU can only make a pass slower); a call with r rows takes the choice for the largest
  timed count <= r;
- above ALL_MATRICES_UP_TO rows, where a pass takes long, a candidate more than 2x slower than
  the best and losing ground as the rows grow (its lag grown by more than LOSING, more than a
  pass's noise) is not timed at larger counts. Below, every candidate is timed at every count:
  the widened products lag far behind at one row and win at hundreds, and a lag that grew between
  two small counts by noise alone dropped them before they could.

The choices are kept in a small JSON file, keyed by the CPU (model name, a digest of its flags,
and what cpu.py says it may run), the torch version, the thread count and a digest of rows.cpp
and of the timing code (TIMED_BY), under the user's cache directory (`cache_path()`;
MINIGPT_CACHE_DIR moves it), so a model of the same shape on the same machine is not timed
again; `clear_cache()` removes it. A timing taken while something else ran is not kept for good:
where the winners' passes spread by more than NOISY (the median over the least), the choice
serves this process and is timed again by the next `optimize`, up to TRIES times, the last kept.
`report(model)` says what was chosen.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from . import cpu
from .cpu import cpu_flags_digest, cpu_name

Kernel = Callable[[Tensor], Tensor]  # x (... in) float32 -> x Wᵀ + b (... out) float32

ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 512)  # the row counts timed; more rows take 512's choice
REPEATS = 3  # timed passes per row count, after one warm-up pass
ALL_MATRICES_UP_TO = 16  # above this many rows a product is bound by arithmetic, not by reading the
                         # weights: one matrix of each kind is timed, not all, to keep the timing short
LOSING = 1.1  # a candidate whose lag on the best grew by more than this (not noise) is losing ground
NOISY = 1.3  # a winner whose median timed pass took more than this times its least: timed while busy
TRIES = 3  # times a noisy choice is timed again, by later calls, before the last is kept


class Routes:
    """The kernels that can multiply by one weight matrix, and which one takes how many rows.
    `key` names the kind of matrix (format and shape) the choice is made and cached for; `tiles`
    what the fused step passes rows.cpp for its tile kernels, if it has them (rows.tile_kernels)."""

    def __init__(self, key: str, kernels: dict[str, Kernel], default: str, tiles: dict[int, list] | None = None):
        self.key, self.kernels, self.tiles = key, kernels, tiles or {}
        self.chosen = {1: default}  # row count -> kernel name, as measured (until then: `default` for all)
        self.by_rows = [kernels[default]] * (ROWS[-1] + 1)  # index r: the kernel for r rows

    def choose(self, chosen: dict[int, str]) -> None:
        """Take a choice per timed row count (as `measure` makes it)."""
        self.chosen = dict(sorted(chosen.items()))
        counts = list(self.chosen)
        for rows in range(1, ROWS[-1] + 1):
            self.by_rows[rows] = self.kernels[self.chosen[max(c for c in counts if c <= rows)]]
        self.by_rows[0] = self.by_rows[1]

    def name_for(self, rows: int) -> str:
        """The name of the kernel that takes `rows` rows."""
        return self.chosen[max(c for c in self.chosen if c <= max(rows, 1))]

    def __call__(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.shape[-1]
        return self.by_rows[min(rows, ROWS[-1])](x)


def routes_of(model: torch.nn.Module) -> list[Routes]:
    """Every fast module's routes, in the model's order (the order a step reads the weights)."""
    return [m.routes for m in model.modules() if isinstance(getattr(m, "routes", None), Routes)]


def choose(model: torch.nn.Module, *, verbose: bool = False) -> dict[str, dict[int, str]]:
    """Give every fast module of the model its measured kernel per row count: from the cache where
    this machine has timed a matrix of the same kind with the same candidates, else timed now (and
    cached). Returns {kind of matrix: {row count: kernel}}."""
    routes = routes_of(model)
    if not routes:
        return {}
    choosable = [r for r in routes if len(r.kernels) > 1]
    timed = cached(sorted({entry_key(r) for r in choosable}),
                   lambda keys: measure([r for r in choosable if entry_key(r) in keys]),
                   f"{', '.join(sorted({n for r in choosable for n in r.kernels}))} for {{}} kinds of matrix at "
                   f"{len(ROWS)} row counts", verbose)
    choices = {}
    for r in routes:
        if len(r.kernels) > 1:
            r.choose(timed[entry_key(r)])
        choices[r.key] = r.chosen
    return choices


def cached(keys: list[str], measure_: Callable[[set[str]], dict[str, tuple[dict[int, str], float]]], what: str,
           verbose: bool) -> dict[str, dict[int, str]]:
    """{key: choice per row count} for each key: from the cache where it holds a settled choice (or
    one timed TRIES times), else measured now (`measure_(keys to time)` -> {key: (choice, spread)})
    and cached, marked noisy where its spread exceeds NOISY (module docstring)."""
    cache = load_cache()
    entries = cache.setdefault(machine_key(), {})
    stale = {key for key in keys if key not in entries or (entries[key].get("spread", 0) > NOISY
                                                            and entries[key].get("tries", 0) < TRIES)}
    if stale:
        if verbose:
            print(f"timing {what.format(len(stale))} (once on this machine; cached in {cache_path()})", flush=True)
        for key, (chosen, spread) in measure_(stale).items():
            tries = entries.get(key, {}).get("tries", 0) + 1
            entries[key] = {"rows": {str(rows): name for rows, name in chosen.items()}, "spread": round(spread, 3), "tries": tries}
            if verbose and spread > NOISY:
                print(f"  {key}: passes spread {spread:.2f}x (busy machine?); timed again by the next optimize "
                      f"({tries} of {TRIES})", flush=True)
        save_cache(cache)
    return {key: dict(sorted((int(rows), name) for rows, name in entries[key]["rows"].items())) for key in keys}


def take_turns(names: list[str], run: Callable[[str], dict[str, float]], repeats: int = REPEATS) -> dict[tuple[str, str], list[float]]:
    """The candidates `names` take turns: `run(name)` makes one pass of candidate `name` and returns
    {what was timed: seconds}; a warm-up pass first (oneDNN makes its primitive for each new shape),
    then `repeats` timed ones. Returns {(what, name): seconds of each timed pass}."""
    seconds: dict[tuple[str, str], list[float]] = {}
    for repeat in range(repeats + 1):
        for name in names:
            for what, t in run(name).items():
                if repeat:
                    seconds.setdefault((what, name), []).append(t)
    return seconds


def fastest(seconds: dict[str, list[float]]) -> tuple[str, float]:
    """The candidate with the least time over its passes, and how far its passes spread (the
    median pass over the least: one slow pass is common, a slow half is a busy machine)."""
    best = min(seconds, key=lambda name: min(seconds[name]))
    passes = sorted(seconds[best])
    return best, passes[len(passes) // 2] / max(passes[0], 1e-12)


def measure(routes: list[Routes], clock: Callable[[], float] = time.perf_counter) -> dict[str, tuple[dict[int, str], float]]:
    """The fastest kernel per kind of matrix (`entry_key`) and row count, timed as the module
    docstring says; with each kind, the widest spread of its winners' passes."""
    kinds: dict[str, list[Routes]] = {}  # entry_key -> the matrices of that kind
    for r in routes:
        kinds.setdefault(entry_key(r), []).append(r)
    alive = {key: list(group[0].kernels) for key, group in kinds.items()}
    behind: dict[tuple[str, str], float] = {}  # (kind, kernel) -> how many times the best's time it took
    chosen: dict[str, dict[int, str]] = {key: {} for key in kinds}
    spread = {key: 1.0 for key in kinds}
    generator = torch.Generator().manual_seed(0)
    for rows in ROWS:
        timed = routes if rows <= ALL_MATRICES_UP_TO else [group[0] for group in kinds.values()]
        inputs = {entry_key(r): torch.randn(rows, in_features(r), generator=generator) for r in timed}

        def one_pass(name: str) -> dict[str, float]:  # every matrix that has kernel `name`, in the model's order
            total: dict[str, float] = {}
            for r in timed:
                key = entry_key(r)
                if name in alive[key]:
                    start = clock()
                    r.kernels[name](inputs[key])
                    total[key] = total.get(key, 0.0) + clock() - start
            return total

        seconds = take_turns(sorted({n for names in alive.values() for n in names}), one_pass)
        for key in kinds:
            times = {name: seconds[(key, name)] for name in alive[key]}
            best, spread_now = fastest(times)
            chosen[key][rows], spread[key] = best, max(spread[key], spread_now)
            for name, t in times.items():
                ratio = min(t) / max(min(times[best]), 1e-12)
                if rows > ALL_MATRICES_UP_TO and ratio > 2 and ratio > LOSING * behind.get((key, name), 0.0):
                    alive[key].remove(name)
                behind[(key, name)] = ratio
    return {key: (chosen[key], spread[key]) for key in kinds}


def in_features(routes: Routes) -> int:
    return int(routes.key.split()[-1].split("x")[0])


def entry_key(routes: Routes) -> str:
    """The kind of matrix and the candidates it was timed with (a new candidate means a new timing)."""
    return f"{routes.key} [{' '.join(sorted(routes.kernels))}]"


def report(model: torch.nn.Module) -> list[str]:
    """One line per kind of matrix: which kernel takes how many rows, e.g.
    `int8 768x3072 (12 matrices): 1-2 rows rows.cpp, 3+ fbgemm`."""
    counts: dict[str, int] = {}
    chosen: dict[str, dict[int, str]] = {}
    for r in routes_of(model):
        counts[r.key] = counts.get(r.key, 0) + 1
        chosen[r.key] = r.chosen
    lines = []
    for key, by_rows in chosen.items():
        spans, starts = [], list(by_rows)
        for i, start in enumerate(starts):  # runs of the same kernel folded into one span
            if spans and spans[-1][2] == by_rows[start]:
                continue
            spans.append([start, None, by_rows[start]])
        for i, span in enumerate(spans[:-1]):
            span[1] = spans[i + 1][0] - 1
        text = ", ".join(f"{a}-{b} rows {name}" if b and b > a else f"{a} row{'s' * (a > 1)} {name}" if b
                         else f"{a}+ rows {name}" for a, b, name in spans)
        lines.append(f"{key} ({counts[key]} matri{'ces' if counts[key] > 1 else 'x'}): {text}")
    return lines


# ---- the cache ------------------------------------------------------------------------------------

def cache_path() -> Path:
    """Where the choices are kept: $MINIGPT_CACHE_DIR, else $XDG_CACHE_HOME/minigpt, else ~/.cache/minigpt."""
    root = os.environ.get("MINIGPT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minigpt"
    return Path(root) / "kernels.json"


def clear_cache() -> Path:
    """Forget every choice made on this machine (the next `optimize` times the kernels again).
    Returns the file that was removed."""
    path = cache_path()
    path.unlink(missing_ok=True)
    return path


def load_cache() -> dict:
    try:
        cache = json.loads(cache_path().read_text())
    except (OSError, ValueError):  # none yet, or unreadable (a half-written file): time again
        return {}
    return cache if isinstance(cache, dict) else {}


def save_cache(cache: dict) -> None:
    """Written whole to a temporary file, then renamed: two processes never see half a file."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(partial, path)
    except OSError:  # a read-only home: the choice holds for this process only
        pass


TIMED_BY = ("rows.cpp", "kernels.py", "fused.py")  # the kernel, and the code that times the choices


def machine_key() -> str:
    """What a choice holds for: the CPU's model name, a digest of its flags and what this process
    may run on it (cpu.py), torch, the threads, and a digest of TIMED_BY (a changed kernel, or a
    changed way of timing, is timed again)."""
    return (f"{cpu_name()} flags:{cpu_flags_digest()} ({cpu.capabilities()}) | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads | code {code_digest()}")


@functools.cache
def code_digest() -> str:
    """TIMED_BY's digest, read once a process (machine_key is asked by every optimize)."""
    digest = hashlib.sha256()
    for name in TIMED_BY:
        digest.update(Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()[:12]
