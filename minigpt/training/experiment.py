"""Swap a component, train, and see: a baseline and its variants, each trained on the same data
with the same budget from several seeds, compared on the same held-out text with error bars.

- A variant is named by the components it swaps in (`VARIANTS`), several joined by commas
  (`rope`, `rmsnorm,swiglu`, `gqa:2`); `variant_config` turns the name into the baseline's
  config with those fields changed, and refuses, before anything trains, a name it does not know,
  two swaps of the same component (`alibi,learned`: two position encodings) or a config that
  cannot be built (`gqa:3` with 4 heads).
- Every run of seed s, whatever its variant, starts from `torch.manual_seed(s)` and reads the
  training windows in the order seed s draws them: a difference between variants at one seed is
  the components', not the data's (compare.py pairs them so); the spread over seeds is what the
  initialisation and order add.
- The budget is the same number of training tokens for every variant, or (`match="flops"`) the
  same training FLOPs as the baseline's (flops.py): a cheaper variant trains for more steps.
- One learning rate for every component favours some of them: with `lrs`, each variant first
  trains from the first seed at each rate on the training text less its last tenth, is scored on
  that tenth (a validation split cut from the training plays, never the held-out text), and the
  grid then trains it at the rate that scored best.
- Each run is a `Run`, trained by `train_run` wherever the workers put it (workers.py: Ray tasks by
  default, or one after another in this process): with its own state file, so an interrupted run
  resumes where it was saved, and its own TensorBoard log (logs.py). A finished run leaves
  `result.json` and is not trained again: an interrupted experiment keeps what it finished. A run
  that fails is reported with its error; the others go on.
- The score is held-out bits per byte: the loss over every held-out token, in bits, per byte of
  the held-out text, so tokenizers of any size compare (here they are all the same one).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..checks import check_choice, check_float
from ..config import GPTConfig
from ..files import write_text_atomically
from ..model import GPT
from .batches import TokenWindows
from .compare import BASELINE, failures, paired_differences, paired_table, summary, table
from .flops import training_flops_per_token
from .logs import RunLog, check_tensorboard
from .token_file import TokenCorpus
from .trainer import TrainConfig, train
from .workers import Failed, InProcess, RayWorkers

__all__ = ["VARIANTS", "variant_config", "Recipe", "Run", "run_experiment", "train_run", "run_name", "summary", "table",
           "paired_differences", "paired_table", "failures", "InProcess", "RayWorkers"]

VALIDATION = 0.1  # the share of the training tokens, from their end, that a learning-rate sweep scores on


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
    """What every run shares: the baseline model, the training loop, the context and the seeds;
    match: "tokens" (every variant the same steps) or "flops" (the baseline's training FLOPs);
    lrs: learning rates to choose from per variant on the validation split (none: train.lr for all)."""

    model: GPTConfig
    train: TrainConfig
    seeds: tuple[int, ...] = (0, 1, 2)
    match: str = "tokens"
    lrs: tuple[float, ...] = ()

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
        check_choice("match", self.match, ("tokens", "flops"))
        if not isinstance(self.lrs, (tuple, list)) or len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"lrs must be distinct learning rates, got {self.lrs!r:.60}")
        for lr in self.lrs:
            check_float("a learning rate of lrs", lr, 0, 10, open_low=True)

    @property
    def block(self) -> int:
        return self.model.n_positions  # each run trains on windows as long as its context

    def tokens_per_step(self) -> int:
        return tokens_in_a_step(self.train, self.block)

    def flops_per_token(self, config: GPTConfig) -> int:
        with torch.device("meta"):  # counted from the shapes: no weights are made
            return training_flops_per_token(GPT(config), self.block)

    def loop(self, config: GPTConfig, lr: float) -> TrainConfig:
        """The training loop of one variant: its learning rate (the schedule's floor in the same
        proportion to it), and under match="flops" as many steps (as many evaluations, checkpoints
        in proportion) as the baseline's FLOPs buy it."""
        loop = dataclasses.replace(self.train, lr=lr, min_lr=lr * self.train.min_lr / self.train.lr)
        if self.match == "tokens":
            return loop
        share = self.flops_per_token(self.model) / self.flops_per_token(config)
        steps = max(1, round(loop.steps * share))
        evaluations = math.ceil(loop.steps / loop.eval_every)  # the trainer evaluates at each multiple and the end
        return dataclasses.replace(loop, steps=steps, eval_every=math.ceil(steps / evaluations),
                                   save_every=max(1, round(loop.save_every * share)))

    def as_dict(self) -> dict:
        written = {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train),
                   "seeds": list(self.seeds)}
        if self.match != "tokens" or self.lrs:  # left out at their defaults: earlier experiments resume as they were
            written.update(match=self.match, lrs=list(self.lrs))
        return written


def tokens_in_a_step(loop: TrainConfig, block: int) -> int:
    """The training tokens of one optimizer step: windows of `block` per batch, batches accumulated."""
    return loop.batch * loop.accumulate * block


def check_variants(recipe: Recipe, variants: list[str]) -> dict[str, GPTConfig]:
    """Every variant's config, the baseline's first, each checked: nothing trains before all are good."""
    names = [BASELINE, *(v for v in variants if v != BASELINE)]
    if len(set(names)) != len(names):
        raise ValueError(f"a variant is named twice: {', '.join(names[1:])}")
    return {name: variant_config(recipe.model, name) for name in names}


@dataclass(frozen=True)
class Run:
    """One run, all it needs to train anywhere (a Ray worker on another node opens the corpus by its
    path): scored on "held_out" (trained on all the training text) or "validation" (trained on the
    training text less its last tenth, scored on that tenth: the learning-rate sweep)."""

    directory: Path
    corpus: Path
    variant: str
    seed: int
    config: GPTConfig
    loop: TrainConfig
    block: int
    scored_on: str = "held_out"


def run_experiment(directory: str | Path, corpus: TokenCorpus, recipe: Recipe, variants: list[str], *,
                   workers: Callable | None = None, report: Callable[[str, int, dict], None] = lambda v, s, r: None,
                   landed: Callable[[dict], None] = lambda result: None) -> list[dict]:
    """Train the baseline and each variant from each seed (those not finished in `directory` yet)
    and return every run's result, in the order variant by variant: variant, seed, learning rate,
    parameters, FLOPs per token, tokens/s, where it ran, and its held-out curve in bits per byte;
    a run that failed gives {"variant", "seed", "error"} instead.
    workers: RayWorkers() (the default: a local Ray, or the cluster RAY_ADDRESS names) or InProcess().
    report(variant, seed, record): after every step of every run, wherever it trains (trainer.py's records).
    landed(result): as each run finishes or fails, in the order they do."""
    if not isinstance(corpus, TokenCorpus):
        raise ValueError(f"corpus must be a TokenCorpus (TokenCorpus.open of a prepared directory), got "
                         f"{type(corpus).__name__}")
    if not isinstance(recipe, Recipe):
        raise ValueError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    if isinstance(variants, str) or not isinstance(variants, (list, tuple)):
        raise ValueError(f"variants must be a list of names such as ['rope', 'rmsnorm,swiglu'], got {variants!r:.40}")
    if workers is not None and not callable(workers):
        raise ValueError(f"workers must be RayWorkers(...) or InProcess(...), got {type(workers).__name__}")
    configs = check_variants(recipe, variants)
    for name, tokens in (("training", corpus.train), ("held-out", corpus.held_out)):
        if len(tokens) < recipe.block + 1:
            raise ValueError(f"the {name} text is {len(tokens)} tokens, too short for windows of {recipe.block}")
    if recipe.lrs and len(corpus.train) * VALIDATION < recipe.block + 1:
        raise ValueError(f"the training text is {len(corpus.train)} tokens: its last tenth is too short to choose a "
                         f"learning rate on, in windows of {recipe.block}")
    if corpus.tokenizer.vocab_size != recipe.model.vocab_size:
        raise ValueError(f"the corpus's tokenizer has {corpus.tokenizer.vocab_size} tokens, the recipe's model "
                         f"{recipe.model.vocab_size}")
    check_tensorboard()
    directory = Path(directory).absolute()  # a worker may start elsewhere
    directory.mkdir(parents=True, exist_ok=True)
    check_same_recipe(directory / "recipe.json", recipe)
    workers = RayWorkers() if workers is None else workers

    def execute(runs: list[Run]) -> list[dict]:
        return train_all(workers, runs, report, landed)

    rates = {name: recipe.train.lr for name in configs}
    if recipe.lrs:
        sweep = {(name, lr): Run(directory / "sweep" / f"{run_name(name, recipe.seeds[0])}-lr{lr:g}",
                                 corpus.directory.absolute(), name, recipe.seeds[0], config, recipe.loop(config, lr),
                                 recipe.block, "validation")
                 for name, config in configs.items() for lr in recipe.lrs}
        scores = dict(zip(sweep, execute(list(sweep.values()))))
        for name in configs:
            tried = {lr: scores[name, lr].get("bits_per_byte", math.inf) for lr in recipe.lrs}
            if min(tried.values()) < math.inf:  # every rate failed (each said why as it landed): train.lr
                rates[name] = min(tried, key=tried.get)
    runs = [Run(directory / run_name(name, seed), corpus.directory.absolute(), name, seed, config,
                recipe.loop(config, rates[name]), recipe.block) for name, config in configs.items() for seed in recipe.seeds]
    return execute(runs)


def train_all(workers: Callable, runs: list[Run], report: Callable, landed: Callable) -> list[dict]:
    """Every run's result in the order given: read if it finished before, else trained by the workers."""
    results = {run: finished(run.directory / "result.json", run.variant, run.seed) for run in runs
               if (run.directory / "result.json").exists()}
    for run, outcome in workers(train_run, [run for run in runs if run not in results], report):
        results[run] = ({"variant": run.variant, "seed": run.seed, "error": outcome.error}
                        if isinstance(outcome, Failed) else outcome)
        landed(results[run])
    return [results[run] for run in runs]


def run_name(variant: str, seed: int) -> str:
    return f"{variant.replace(',', '+').replace(':', '')}-seed{seed}"


def check_same_recipe(path: Path, recipe: Recipe) -> None:
    """A directory holds one experiment: resuming it with another recipe would mix incomparable runs."""
    written = json.dumps(recipe.as_dict(), indent=1, sort_keys=True)
    if path.exists() and path.read_text() != written + "\n":
        raise ValueError(f"{path.parent} holds an experiment with another recipe (its recipe.json); "
                         "resume it with the same options or start a new directory")
    write_text_atomically(path, written + "\n")


@functools.lru_cache(maxsize=4)
def opened(directory: Path) -> TokenCorpus:
    """A corpus opened once per process (its ids are checked as it opens)."""
    return TokenCorpus.open(directory)


def split(run: Run) -> tuple[object, object, float]:
    """The run's training tokens, the tokens it is scored on, and the factor from nats per token of
    those to bits per byte (their bytes counted: the validation tenth's by decoding it)."""
    corpus = opened(run.corpus)
    if run.scored_on == "held_out":
        return corpus.train, corpus.held_out, len(corpus.held_out) / corpus.info["bytes"]["held_out"] / math.log(2)
    cut = len(corpus.train) - int(len(corpus.train) * VALIDATION)
    scored = corpus.train[cut:]
    return corpus.train[:cut], scored, len(scored) / len(corpus.tokenizer.decode_bytes(scored.tolist())) / math.log(2)


def train_run(run: Run, report: Callable[[str, int, dict], None], where: str) -> dict:
    """One variant from one seed: trained (or resumed) now, its log and result.json written."""
    run.directory.mkdir(parents=True, exist_ok=True)
    training, scored, bits_per_nat = split(run)
    torch.manual_seed(run.seed)
    model = GPT(run.config)
    state = run.directory / "training-state.pt"
    log = RunLog(run.directory, run.loop.save_every, bits_per_nat)
    speeds: list[float] = []

    def each_step(record: dict) -> None:
        speeds.append(record["tokens_per_s"])
        log(record)
        report(run.variant, run.seed, record)

    started = time.perf_counter()
    try:
        history = train(model, TokenWindows(training, run.block, seed=run.seed), TokenWindows(scored, run.block, seed=0),
                        run.loop, state_path=state, resume=state.exists(), report=each_step)
    except BaseException:
        log.close()
        raise
    step_tokens = tokens_in_a_step(run.loop, run.block)
    result = {"variant": run.variant, "seed": run.seed, "lr": run.loop.lr, "steps": run.loop.steps,
              "tokens_per_step": step_tokens, "components": run.config.components,
              "parameters": sum(p.numel() for p in model.parameters()),
              "flops_per_token": training_flops_per_token(model, run.block),
              "tokens_per_s": statistics.median(speeds) if speeds else None,
              "seconds": time.perf_counter() - started, "ran_on": where, "scored_on": run.scored_on,
              "curve": [{"step": h["step"], "tokens": h["step"] * step_tokens,
                         "bits_per_byte": h["held_out"] * bits_per_nat} for h in history]}
    result["bits_per_byte"] = result["curve"][-1]["bits_per_byte"]
    log.finish(result)
    write_text_atomically(run.directory / "result.json", json.dumps(result, indent=1) + "\n")
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
