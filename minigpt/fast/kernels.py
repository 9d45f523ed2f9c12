"""Which kernel multiplies how many rows, chosen by timing the candidates on this machine, once.

Each fast module (packed.py, int8.py) can multiply by its weight matrix with several kernels:
rows.cpp, oneDNN, PyTorch's own `F.linear`, fbgemm, PyTorch's weight-only int8 product. Which is
fastest depends on the CPU (its vector units, AMX tiles, caches, memory bandwidth), the matrix's
shape and the number of rows: rows.cpp streams the weights for one or two rows, the libraries'
blocked kernels reuse each loaded weight across many. A constant measured on one CPU is wrong on
the next, so `choose` times them here:

- for each row count in ROWS, every candidate multiplies that many rows by every matrix of the
  model, in the model's order, so that each weight comes from memory as in a real step (taken
  together the weights are many times the caches) and not from a cache warmed by the last call;
  the candidates take turns, a warm-up pass first, then REPEATS timed passes;
- per kind of matrix (format, in, out: the 12 layers' c_attn are one kind) and row count, the
  candidate with the least time over its passes wins (the least, not the median: another process
  on the CPU can only make a pass slower, and on a shared 2-core machine one pass in three can
  take several times as long); a call with r rows takes the choice for the largest
  timed count <= r;
- a candidate more than 3x slower than the best and losing ground as the rows grow is not timed
  at larger counts (PyTorch's weight-only int8 product runs a scalar loop on some CPUs, 25x slower).

The choices are kept in a small JSON file, keyed by the CPU (model name and a digest of its flags),
the torch version, the thread count and a digest of rows.cpp and of the timing code (TIMED_BY),
under the user's cache directory (`cache_path()`; MINIGPT_CACHE_DIR moves it), so a model of the
same shape on the same machine is not timed again; `clear_cache()` removes it. `report(model)` says what was chosen.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor

Kernel = Callable[[Tensor], Tensor]  # x (... in) float32 -> x Wᵀ + b (... out) float32

ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128)  # the row counts timed; more rows take 128's choice
REPEATS = 3  # timed passes per row count, after one warm-up pass
ALL_MATRICES_UP_TO = 16  # above this many rows a product is bound by arithmetic, not by reading the
                         # weights: one matrix of each kind is timed, not all, to keep the timing short


class Routes:
    """The kernels that can multiply by one weight matrix, and which one takes how many rows.
    `key` names the kind of matrix (format and shape) the choice is made and cached for."""

    def __init__(self, key: str, kernels: dict[str, Kernel], default: str):
        self.key, self.kernels = key, kernels
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
    cache = load_cache()
    entries = cache.setdefault(machine_key(), {})
    missing = [r for r in routes if len(r.kernels) > 1 and entry_key(r) not in entries]
    if missing:
        if verbose:
            kinds = sorted({r.key for r in missing})
            print(f"timing {', '.join(sorted({n for r in missing for n in r.kernels}))} for {len(kinds)} kinds of "
                  f"matrix at {len(ROWS)} row counts (once on this machine; cached in {cache_path()})", flush=True)
        entries |= {key: {str(rows): name for rows, name in chosen.items()} for key, chosen in measure(missing).items()}
        save_cache(cache)
    choices = {}
    for r in routes:
        if len(r.kernels) > 1:
            r.choose({int(rows): name for rows, name in entries[entry_key(r)].items()})
        choices[r.key] = r.chosen
    return choices


def measure(routes: list[Routes], clock: Callable[[], float] = time.perf_counter) -> dict[str, dict[int, str]]:
    """The fastest kernel per kind of matrix (`entry_key`) and row count, timed as the module docstring says."""
    kinds: dict[str, list[Routes]] = {}  # entry_key -> the matrices of that kind
    for r in routes:
        kinds.setdefault(entry_key(r), []).append(r)
    alive = {key: list(group[0].kernels) for key, group in kinds.items()}
    behind: dict[tuple[str, str], float] = {}  # (kind, kernel) -> how many times the best's time it took
    chosen: dict[str, dict[int, str]] = {key: {} for key in kinds}
    generator = torch.Generator().manual_seed(0)
    for rows in ROWS:
        timed = routes if rows <= ALL_MATRICES_UP_TO else [group[0] for group in kinds.values()]
        inputs = {entry_key(r): torch.randn(rows, in_features(r), generator=generator) for r in timed}
        seconds: dict[tuple[str, str], list[float]] = {}
        for repeat in range(REPEATS + 1):
            for name in sorted({n for names in alive.values() for n in names}):  # the candidates take turns
                total: dict[str, float] = {}
                for r in timed:
                    key = entry_key(r)
                    if name not in alive[key]:
                        continue
                    kernel, x = r.kernels[name], inputs[key]
                    start = clock()
                    kernel(x)
                    total[key] = total.get(key, 0.0) + clock() - start
                if repeat:  # the first pass warms up (oneDNN makes its primitive for each new shape)
                    for key, t in total.items():
                        seconds.setdefault((key, name), []).append(t)
        for key in kinds:
            times = {name: min(seconds[(key, name)]) for name in alive[key]}
            best = min(times, key=times.get)
            chosen[key][rows] = best
            for name, t in times.items():
                ratio = t / max(times[best], 1e-12)
                if ratio > 3 and ratio > behind.get((key, name), 0.0):
                    alive[key].remove(name)
                behind[(key, name)] = ratio
    return chosen


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
    """What a choice holds for: the CPU's model name and a digest of its flags, torch, the threads,
    and a digest of TIMED_BY (a changed kernel, or a changed way of timing, is timed again)."""
    return (f"{cpu_name()} flags:{cpu_flags_digest()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
            f" | code {code_digest()}")


@functools.cache
def code_digest() -> str:
    """TIMED_BY's digest, read once a process (machine_key is asked by every optimize)."""
    digest = hashlib.sha256()
    for name in TIMED_BY:
        digest.update(Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()[:12]


def cpu_info() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}


def cpu_name() -> str:
    return cpu_info().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    return cpu_info().get("flags", "").split()


def cpu_flags_digest() -> str:
    return hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]


def vector_flags(flags: Iterable[str] | None = None) -> list[str]:
    """The CPU's flags the kernels can use: AVX2, FMA, F16C, the AVX-512 family, VNNI, BF16, AMX."""
    wanted = ("avx2", "fma", "f16c", "avx512", "vnni", "bf16", "amx")
    return [f for f in (cpu_flags() if flags is None else flags) if f.startswith(wanted) or any(w in f for w in wanted[4:])]
