"""Swap a component, train, and see: a baseline and its variants, each trained on the same data
with the same budget from several seeds, compared on the same held-out text with error bars.

- A variant is named by the components it swaps in (`VARIANTS`), several joined by commas
  (`rope`, `rmsnorm,swiglu`, `gqa:2`); `variant_config` turns the name into the baseline's
  config with those fields changed, and refuses, before anything trains, a name it does not know,
  two swaps of the same component (`alibi,learned`: two position encodings) or a config that
  cannot be built (`gqa:3` with 4 heads).
- Every run of seed s, whatever its variant, starts from `torch.manual_seed(s)` and reads the
  training windows in the order seed s draws them: a difference between variants at one seed is
  the components', not the data's; the spread over seeds is what the initialisation and order add.
- Each run is `train` (trainer.py) with its own state file, so an interrupted run resumes where it
  was saved; a finished run leaves `result.json` and is not trained again: an interrupted
  experiment keeps what it finished.
- The score is held-out bits per byte: the loss over every held-out token, in bits, per byte of
  the held-out text, so tokenizers of any size compare (here they are all the same one).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import GPTConfig
from ..files import write_text_atomically
from ..model import GPT
from .batches import TokenWindows
from .token_file import TokenCorpus
from .trainer import TrainConfig, train

BASELINE = "baseline"


# name -> (the config fields it sets, given the baseline config and the text after ":" or None)
VARIANTS: dict[str, Callable[[GPTConfig, str | None], dict]] = {
    "learned": lambda base, arg: {"position": "learned"},  # GPT-2's own, named so that a clash can be seen
    "rope": lambda base, arg: {"position": "rope"},
    "alibi": lambda base, arg: {"position": "alibi"},
    "layernorm": lambda base, arg: {"norm": "layernorm"},
    "rmsnorm": lambda base, arg: {"norm": "rmsnorm"},
    "swiglu": lambda base, arg: {"mlp": "swiglu"},
    "gqa": lambda base, arg: {"n_kv_head": _number("gqa", arg, base.n_head // 2 or 1)},  # default: 2 heads a group
    "mqa": lambda base, arg: {"n_kv_head": 1},
    "qk-norm": lambda base, arg: {"qk_norm": True},
    "window": lambda base, arg: {"window": _number("window", arg, max(1, base.n_positions // 4))},
}


def _number(name: str, arg: str | None, default: int) -> int:
    if arg is None:
        return default
    if not arg.isdigit() or int(arg) < 1:
        raise ValueError(f"variant {name}:{arg}: after the colon comes a positive whole number")
    return int(arg)


def variant_config(base: GPTConfig, name: str) -> GPTConfig:
    """The baseline's config with the named variant's components swapped in ("baseline": none)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a variant is named by a string such as 'rope' or 'rmsnorm,swiglu', got {name!r:.40}")
    written = ",".join(part.strip() for part in name.split(","))
    if written != name:  # 'rope ' would be a second run of 'rope' under another name
        raise ValueError(f"variant {name!r} has spaces around a part: write it {written!r}")
    if name == BASELINE:
        return base
    fields: dict[str, object] = {}
    setters: dict[str, str] = {}  # field -> the part that set it
    for part in name.split(","):
        key, _, arg = part.strip().partition(":")
        if key not in VARIANTS:
            raise ValueError(f"unknown variant {key!r} in {name!r}; known: {', '.join(VARIANTS)} "
                             "(join several with commas; gqa:N and window:N take a number)")
        for field, value in VARIANTS[key](base, arg or None).items():
            if field in setters:
                raise ValueError(f"variant {name!r}: {setters[field]} and {part} both set the model's {field}; "
                                 "choose one")
            fields[field], setters[field] = value, part
    try:
        return dataclasses.replace(base, **fields)
    except ValueError as err:
        raise ValueError(f"variant {name!r}: {err}") from None


@dataclass(frozen=True)
class Recipe:
    """What every run shares: the baseline model, the training loop, the context and the seeds."""

    model: GPTConfig
    train: TrainConfig
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if not isinstance(self.model, GPTConfig) or not isinstance(self.train, TrainConfig):
            raise ValueError(f"a Recipe takes a GPTConfig and a TrainConfig, got {type(self.model).__name__} and "
                             f"{type(self.train).__name__}")
        if not isinstance(self.seeds, (tuple, list)) or not self.seeds or len(set(self.seeds)) != len(self.seeds) or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**64 for s in self.seeds):
            raise ValueError(f"seeds must be distinct integers in [0, 2^64) (what torch.manual_seed takes), at least "
                             f"one, got {self.seeds!r:.60}")
        if self.train.steps < self.train.eval_every:
            raise ValueError(f"a budget of {self.train.steps} steps is too small for one evaluation (every "
                             f"{self.train.eval_every} steps): raise the steps or evaluate more often")

    @property
    def block(self) -> int:
        return self.model.n_positions  # each run trains on windows as long as its context

    def tokens_per_step(self) -> int:
        return self.train.batch * self.train.accumulate * self.block

    def as_dict(self) -> dict:
        return {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train),
                "seeds": list(self.seeds)}


def check_variants(recipe: Recipe, variants: list[str]) -> dict[str, GPTConfig]:
    """Every variant's config, the baseline's first, each checked: nothing trains before all are good."""
    names = [BASELINE, *(v for v in variants if v != BASELINE)]
    if len(set(names)) != len(names):
        raise ValueError(f"a variant is named twice: {', '.join(names[1:])}")
    return {name: variant_config(recipe.model, name) for name in names}


def run_experiment(directory: str | Path, corpus: TokenCorpus, recipe: Recipe, variants: list[str], *,
                   report: Callable[[str, int, dict], None] = lambda name, seed, record: None) -> list[dict]:
    """Train the baseline and each variant from each seed (those not finished in `directory` yet)
    and return every run's result: variant, seed, parameters, tokens/s, and its held-out curve
    in bits per byte. report(variant, seed, record) after every step (trainer.py's records)."""
    if not isinstance(corpus, TokenCorpus):
        raise ValueError(f"corpus must be a TokenCorpus (TokenCorpus.open of a prepared directory), got "
                         f"{type(corpus).__name__}")
    if not isinstance(recipe, Recipe):
        raise ValueError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    if isinstance(variants, str) or not isinstance(variants, (list, tuple)):
        raise ValueError(f"variants must be a list of names such as ['rope', 'rmsnorm,swiglu'], got {variants!r:.40}")
    configs = check_variants(recipe, variants)
    for name, tokens in (("training", corpus.train), ("held-out", corpus.held_out)):
        if len(tokens) < recipe.block + 1:
            raise ValueError(f"the {name} text is {len(tokens)} tokens, too short for windows of {recipe.block}")
    if corpus.tokenizer.vocab_size != recipe.model.vocab_size:
        raise ValueError(f"the corpus's tokenizer has {corpus.tokenizer.vocab_size} tokens, the recipe's model "
                         f"{recipe.model.vocab_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    check_same_recipe(directory / "recipe.json", recipe)
    bits_per_nat = len(corpus.held_out) / corpus.info["bytes"]["held_out"] / math.log(2)  # per token -> per byte
    results = []
    for name, config in configs.items():
        for seed in recipe.seeds:
            results.append(train_one(directory / run_name(name, seed), corpus, recipe, name, config, seed,
                                     bits_per_nat, report))
    return results


def run_name(variant: str, seed: int) -> str:
    return f"{variant.replace(',', '+').replace(':', '')}-seed{seed}"


def check_same_recipe(path: Path, recipe: Recipe) -> None:
    """A directory holds one experiment: resuming it with another recipe would mix incomparable runs."""
    written = json.dumps(recipe.as_dict(), indent=1, sort_keys=True)
    if path.exists() and path.read_text() != written + "\n":
        raise ValueError(f"{path.parent} holds an experiment with another recipe (its recipe.json); "
                         "resume it with the same options or start a new directory")
    write_text_atomically(path, written + "\n")


def train_one(run: Path, corpus: TokenCorpus, recipe: Recipe, name: str, config: GPTConfig, seed: int,
              bits_per_nat: float, report: Callable[[str, int, dict], None]) -> dict:
    """One variant from one seed: its result.json if it finished before, else trained (or resumed) now."""
    done = run / "result.json"
    if done.exists():
        return finished(done, name, seed)
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = GPT(config)
    state = run / "training-state.pt"
    speeds: list[float] = []

    def each_step(record: dict) -> None:
        speeds.append(record["tokens_per_s"])
        report(name, seed, record)

    started = time.perf_counter()
    history = train(model, TokenWindows(corpus.train, recipe.block, seed=seed),
                    TokenWindows(corpus.held_out, recipe.block, seed=0), recipe.train, state_path=state,
                    resume=state.exists(), report=each_step)
    result = {"variant": name, "seed": seed, "components": config.components,
              "parameters": sum(p.numel() for p in model.parameters()),
              "tokens_per_s": statistics.median(speeds) if speeds else None,
              "seconds": time.perf_counter() - started,
              "curve": [{"step": h["step"], "tokens": h["step"] * recipe.tokens_per_step(),
                         "bits_per_byte": h["held_out"] * bits_per_nat} for h in history]}
    result["bits_per_byte"] = result["curve"][-1]["bits_per_byte"]
    write_text_atomically(done, json.dumps(result, indent=1) + "\n")
    state.unlink(missing_ok=True)  # the result is kept; the optimizer's state is not needed again
    return result


def finished(path: Path, name: str, seed: int) -> dict:
    """A run's result.json as it was written, or one clear error: a file cut short or not a result
    of this run is not taken for one."""
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read as a run's result ({err}); delete it to train the run again") from None
    wanted = {"variant", "seed", "curve", "bits_per_byte"}
    if not isinstance(result, dict) or not wanted <= result.keys() or (result["variant"], result["seed"]) != (name, seed):
        raise ValueError(f"{path} is not the result of run {name} from seed {seed}; delete it to train the run again")
    return result


def by_variant(results: list[dict]) -> dict[str, list[dict]]:
    """The results grouped by variant, in the order first seen."""
    groups: dict[str, list[dict]] = {}
    for result in results:
        groups.setdefault(result["variant"], []).append(result)
    return groups


def summary(results: list[dict]) -> list[dict]:
    """Per variant, in the order first seen: held-out bits per byte (mean, standard deviation over
    seeds, lowest, highest), the difference of the mean from the baseline's, parameters, tokens/s."""
    rows = []
    for name, runs in by_variant(results).items():
        scores = [r["bits_per_byte"] for r in runs]
        rows.append({"variant": name, "seeds": len(runs), "mean": statistics.fmean(scores),
                     "std": statistics.stdev(scores) if len(scores) > 1 else 0.0, "low": min(scores),
                     "high": max(scores), "parameters": runs[0]["parameters"],
                     "tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in runs if r["tokens_per_s"])})
    base = next((row["mean"] for row in rows if row["variant"] == BASELINE), None)
    for row in rows:
        row["change"] = None if base is None else row["mean"] - base
    return rows


def table(rows: list[dict]) -> str:
    """The summary as a Markdown table."""
    lines = ["| variant | held-out bits/byte (mean ± sd over seeds) | range | vs baseline | parameters | tokens/s |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        change = "" if row["change"] is None or row["variant"] == BASELINE else f"{row['change']:+.4f}"
        lines.append(f"| {row['variant']} | {row['mean']:.4f} ± {row['std']:.4f} ({row['seeds']} seeds) | "
                     f"{row['low']:.4f}–{row['high']:.4f} | {change} | {row['parameters']:,} | "
                     f"{row['tokens_per_s']:,.0f} |")
    return "\n".join(lines)
