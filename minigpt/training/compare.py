"""What an experiment's runs say: each variant's score over its seeds, and its difference from the
baseline as a reviewer would accept it.

The runs of one seed share their initialisation and their data order (experiment.py), so the
comparison is paired: per seed, the variant's held-out bits per byte minus the baseline's. Their
mean, with a 95% interval from Student's t on n - 1 degrees of freedom (n seeds), says whether the
difference is the component's or the seeds': an interval that holds 0 is not resolved by these
seeds. With 3 seeds t is 4.30, so an interval is wide unless the differences agree closely: the
table says how many seeds each rests on. A run that failed is left out of both tables (its seed
then pairs with nothing) and listed by `failures`.
"""

from __future__ import annotations

import math
import statistics

BASELINE = "baseline"


def succeeded(results: list[dict]) -> list[dict]:
    return [result for result in results if "error" not in result]


def failures(results: list[dict]) -> list[str]:
    """One line per failed run: variant, seed and the error."""
    return [f"{r['variant']} seed {r['seed']}: {r['error']}" for r in results if "error" in r]


def by_variant(results: list[dict]) -> dict[str, list[dict]]:
    """The finished runs grouped by variant, in the order first seen."""
    groups: dict[str, list[dict]] = {}
    for result in succeeded(results):
        groups.setdefault(result["variant"], []).append(result)
    return groups


def summary(results: list[dict]) -> list[dict]:
    """Per variant, in the order first seen: held-out bits per byte (mean, standard deviation over
    seeds, lowest, highest), the difference of the mean from the baseline's, parameters, FLOPs per
    token, tokens/s."""
    rows = []
    for name, runs in by_variant(results).items():
        scores = [r["bits_per_byte"] for r in runs]
        rows.append({"variant": name, "seeds": len(runs), "mean": statistics.fmean(scores),
                     "std": statistics.stdev(scores) if len(scores) > 1 else 0.0, "low": min(scores),
                     "high": max(scores), "parameters": runs[0]["parameters"],
                     "flops_per_token": runs[0].get("flops_per_token"),
                     "tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in runs if r["tokens_per_s"])})
    base = next((row["mean"] for row in rows if row["variant"] == BASELINE), None)
    for row in rows:
        row["change"] = None if base is None else row["mean"] - base
    return rows


def table(rows: list[dict]) -> str:
    """The summary as a Markdown table."""
    lines = ["| variant | held-out bits/byte (mean ± sd over seeds) | range | vs baseline | parameters | "
             "training FLOPs/token | tokens/s |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        change = "" if row["change"] is None or row["variant"] == BASELINE else f"{row['change']:+.4f}"
        flops = "" if row["flops_per_token"] is None else f"{row['flops_per_token']:,}"
        lines.append(f"| {row['variant']} | {row['mean']:.4f} ± {row['std']:.4f} ({row['seeds']} seeds) | "
                     f"{row['low']:.4f}–{row['high']:.4f} | {change} | {row['parameters']:,} | {flops} | "
                     f"{row['tokens_per_s']:,.0f} |")
    return "\n".join(lines)


def paired_differences(results: list[dict], level: float = 0.95) -> list[dict]:
    """Per variant but the baseline: the per-seed differences from the baseline (variant minus
    baseline, bits per byte; below 0 is better), their mean, and its `level` interval by the paired t."""
    groups = by_variant(results)
    base = {r["seed"]: r["bits_per_byte"] for r in groups.get(BASELINE, [])}
    rows = []
    for name, runs in groups.items():
        if name == BASELINE:
            continue
        differences = [r["bits_per_byte"] - base[r["seed"]] for r in runs if r["seed"] in base]
        n = len(differences)
        mean = statistics.fmean(differences) if n else math.nan
        half = (t_quantile((1 + level) / 2, n - 1) * statistics.stdev(differences) / math.sqrt(n)) if n > 1 else math.nan
        rows.append({"variant": name, "seeds": n, "mean": mean, "low": mean - half, "high": mean + half,
                     "differences": differences, "level": level})
    return rows


def paired_table(rows: list[dict]) -> str:
    """The paired differences as a Markdown table, with what each interval says."""
    lines = ["| variant | vs baseline, paired by seed (bits/byte) | 95% interval (paired t) | seeds | the interval says |",
             "|---|---|---|---|---|"]
    for row in rows:
        if row["seeds"] < 2:
            interval, verdict = "needs 2 seeds", "—"
        else:
            interval = f"{row['low']:+.4f} to {row['high']:+.4f}"
            verdict = "better" if row["high"] < 0 else "worse" if row["low"] > 0 else "not resolved by these seeds"
        lines.append(f"| {row['variant']} | {row['mean']:+.4f} | {interval} | {row['seeds']} | {verdict} |")
    return "\n".join(lines)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom (0.5 < p < 1): its CDF integrated
    by Simpson's rule from 0 and inverted by bisection, to 1e-9 (the standard library has no t)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile takes 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def density(t: float) -> float:
        return scale * (1 + t * t / df) ** (-(df + 1) / 2)

    def above_half(x: float, intervals: int = 4000) -> float:  # P(0 < T < x), Simpson's rule
        h = x / intervals
        inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, intervals))
        return h / 3 * (density(0) + inner + density(x))

    low, high = 0.0, 1.0
    while above_half(high) < p - 0.5:
        low, high = high, 2 * high
    while high - low > 1e-9:
        middle = (low + high) / 2
        low, high = (middle, high) if above_half(middle) < p - 0.5 else (low, middle)
    return (low + high) / 2
