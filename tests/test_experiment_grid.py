"""The experiment grid beyond one process: runs as Ray tasks on a two-node cluster, equal bit for
bit to the same runs made here; a failing run reported while the others finish; every run in
TensorBoard, read back by TensorBoard's own reader; comparisons paired by seed with intervals;
FLOPs per token against torch's own count; budgets matched in FLOPs; a learning rate chosen per
variant on a validation split."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from minigpt import GPT, GPTConfig
from minigpt.training import TrainConfig
from minigpt.training.compare import paired_differences, paired_table, t_quantile
from minigpt.training.experiment import (VALIDATION, InProcess, Recipe, RayWorkers, run_experiment, run_name, split,
                                         variant_config, Run)
from minigpt.training.flops import forward_flops_per_token, training_flops_per_token
from minigpt.training.logs import read_logs

BASE = GPTConfig(n_layer=1, n_head=4, n_embd=16, vocab_size=2048, n_positions=32)
TIMING = {"seconds", "tokens_per_s", "ran_on"}  # what may differ between two trainings of one run


@pytest.fixture(scope="module")
def corpus(experiment_corpus):
    return experiment_corpus


def recipe(seeds=(0, 1), **fields) -> Recipe:
    return Recipe(model=BASE, train=TrainConfig(steps=4, batch=2, warmup=1, eval_every=2, save_every=1), seeds=seeds,
                  **fields)


def without_timing(result: dict) -> dict:
    return {key: value for key, value in result.items() if key not in TIMING}


def damage_checkpoint(directory, variant: str, seed: int) -> None:
    """A run that will fail: its checkpoint is not a checkpoint (a disk that filled, a copy cut short)."""
    run = directory / run_name(variant, seed)
    run.mkdir(parents=True)
    (run / "training-state.pt").write_bytes(b"not a checkpoint")


@pytest.fixture(scope="module")
def in_process(corpus, tmp_path_factory):
    """The grid trained here, one run after another, one thread each: what Ray's runs must equal."""
    return run_experiment(tmp_path_factory.mktemp("here"), corpus, recipe(), ["rope"], workers=InProcess(threads=1))


def test_runs_on_a_two_node_ray_cluster_equal_the_same_runs_made_here(corpus, in_process, tmp_path):
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        damage_checkpoint(tmp_path, "rope", 1)
        landed, steps = [], []
        workers = RayWorkers(cluster.address, threads=1)
        results = run_experiment(tmp_path, corpus, recipe(), ["rope"], workers=workers, landed=landed.append,
                                 report=lambda variant, seed, record: steps.append((variant, seed, record["step"])))
        assert [(r["variant"], r["seed"]) for r in results] == [("baseline", 0), ("baseline", 1), ("rope", 0), ("rope", 1)]
        failed = results[3]
        assert failed["error"].startswith("ValueError: ") and "training-state.pt" in failed["error"]
        for made_here, on_ray in zip(in_process[:3], results[:3]):  # the runs are deterministic: bit for bit
            assert without_timing(on_ray) == without_timing(made_here)
        assert len({r["ran_on"] for r in results[:3]}) == 2  # both nodes trained runs
        assert len(landed) == 4
        # every step of the runs that trained came back to the driver's report, each run's in order
        assert sorted(steps) == [(v, s, step) for v, s in [("baseline", 0), ("baseline", 1), ("rope", 0)]
                                 for step in (1, 2, 3, 4)]
        assert [step for v, s, step in steps if (v, s) == ("rope", 0)] == [1, 2, 3, 4]

        # resumed: the finished runs are read, not trained; the failed one is tried again
        (tmp_path / run_name("rope", 1) / "training-state.pt").unlink()
        written = {r["ran_on"]: (tmp_path / run_name(r["variant"], r["seed"]) / "result.json").stat().st_mtime_ns
                   for r in results[:3]}
        landed.clear()
        again = run_experiment(tmp_path, corpus, recipe(), ["rope"], workers=workers, landed=landed.append)
        assert [(r["variant"], r["seed"]) for r in landed] == [("rope", 1)]
        assert without_timing(again[3]) == without_timing(in_process[3])
        assert {r["ran_on"]: (tmp_path / run_name(r["variant"], r["seed"]) / "result.json").stat().st_mtime_ns
                for r in again[:3]} == written

        # without an address, a Ray of its own: not the cluster this machine started last (Ray's own default)
        cluster_nodes = {node.node_id[:12] for node in cluster.list_all_nodes()}
        [alone] = run_experiment(tmp_path / "alone", corpus, recipe(seeds=(0,)), [], workers=RayWorkers())
        assert alone["ran_on"].startswith("ray node ") and alone["ran_on"][len("ray node "):] not in cluster_nodes
    finally:
        cluster.shutdown()


def test_a_failing_run_is_reported_and_the_others_finish_in_process_too(corpus, in_process, tmp_path):
    damage_checkpoint(tmp_path, "baseline", 0)
    results = run_experiment(tmp_path, corpus, recipe(), ["rope"], workers=InProcess(threads=1))
    assert "error" in results[0] and "training-state.pt" in results[0]["error"]
    assert [without_timing(r) for r in results[1:]] == [without_timing(r) for r in in_process[1:]]
    rows = paired_differences(results)  # baseline seed 0 failed: rope pairs on seed 1 only
    assert rows[0]["seeds"] == 1 and "needs 2 seeds" in paired_table(rows)


def test_every_run_is_in_tensorboard_and_reads_back_as_its_result(corpus, tmp_path):
    """TensorBoard's own reader finds each run's scalars and hyperparameters; an interrupted and
    resumed run logs each step once."""
    def interrupt(variant, seed, record):
        if variant == "rope" and seed == 0 and record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(tmp_path, corpus, recipe(), ["rope"], workers=InProcess(threads=1), report=interrupt)
    results = run_experiment(tmp_path, corpus, recipe(), ["rope"], workers=InProcess(threads=1))
    names = [run_name(r["variant"], r["seed"]) for r in results]
    logged = read_logs(tmp_path, names)
    for result, log in zip(results, logged):
        for key in ("variant", "seed", "lr", "steps", "tokens_per_step", "parameters", "flops_per_token"):
            assert log[key] == result[key], key
        assert log["components"] == str(result["components"])
        # TensorBoard keeps scalars in float32
        assert [p["step"] for p in log["curve"]] == [p["step"] for p in result["curve"]] == [2, 4]
        assert [p["tokens"] for p in log["curve"]] == [p["tokens"] for p in result["curve"]]
        for a, b in zip(log["curve"], result["curve"]):
            assert a["bits_per_byte"] == pytest.approx(b["bits_per_byte"], rel=1e-6)
        assert log["tokens_per_s"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "rope-seed0"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]  # step 3 was logged twice, kept once
    assert {"train/loss", "train/lr", "train/tokens_per_s", "held_out/bits_per_byte"} <= set(events.Tags()["scalars"])


def test_t_quantiles_are_the_tables():
    # two-sided 95% critical values of Student's t (any statistics table)
    for df, value in [(1, 12.7062), (2, 4.3027), (3, 3.1824), (5, 2.5706), (10, 2.2281), (30, 2.0423)]:
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)
    assert t_quantile(0.95, 4) == pytest.approx(2.1318, abs=1e-4)
    with pytest.raises(ValueError, match="0.5 < p < 1"):
        t_quantile(0.4, 3)


def test_paired_differences_pair_each_seed_with_the_baseline_of_that_seed():
    def run(variant, seed, score):
        return {"variant": variant, "seed": seed, "bits_per_byte": score, "parameters": 1, "tokens_per_s": 1.0}

    # the baseline's seeds spread widely, the variant is 0.1 better at every one of them
    results = [run("baseline", s, b) for s, b in enumerate([2.0, 2.3, 2.6])] + \
              [run("better", s, b) for s, b in enumerate([1.9, 2.21, 2.49])] + \
              [run("same", s, b) for s, b in enumerate([2.05, 2.25, 2.6])] + [{"variant": "same", "seed": 3, "error": "x"}]
    better, same = paired_differences(results)
    assert better["differences"] == pytest.approx([-0.1, -0.09, -0.11])
    half = 4.3027 * 0.01 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert (better["mean"], better["low"], better["high"]) == pytest.approx((-0.1, -0.1 - half, -0.1 + half), abs=1e-4)
    assert same["seeds"] == 3 and same["low"] < 0 < same["high"]
    text = paired_table([better, same])
    assert "| better | -0.1000 | -0.1248 to -0.0752 | 3 | better |" in text
    assert "| same | +0.0000 |" in text and "not resolved by these seeds" in text
    # unpaired, the spread of the baseline's seeds (sd 0.3) would hide the same 0.1
    assert statistics.stdev([2.0, 2.3, 2.6]) > 0.1


@pytest.mark.parametrize("variant", ["baseline", "swiglu", "gqa", "mqa", "rope,rmsnorm", "window:4", "alibi,qk-norm"])
def test_flops_per_token_are_what_torch_counts(variant):
    """torch's FlopCounterMode over a forward and a backward pass of the model, per token."""
    config = variant_config(GPTConfig(n_layer=2, n_head=4, n_embd=32, vocab_size=512, n_positions=16), variant)
    model = GPT(config)
    tokens = torch.randint(0, 512, (2, 16))
    with FlopCounterMode(display=False) as counter:
        model(tokens).sum().backward()
    assert training_flops_per_token(model, 16) * tokens.numel() == counter.get_total_flops()
    assert training_flops_per_token(model, 16) == 3 * forward_flops_per_token(model, 16)


def test_a_flops_budget_gives_a_cheaper_variant_more_steps():
    flops = Recipe(model=BASE, train=TrainConfig(steps=300, eval_every=75, save_every=75), match="flops")
    base, mqa, swiglu = (variant_config(BASE, name) for name in ("baseline", "mqa", "swiglu"))
    assert flops.loop(base, 1e-3).steps == 300
    for config in (mqa, swiglu):
        loop = flops.loop(config, 1e-3)
        spent = loop.steps * flops.flops_per_token(config)
        assert abs(spent - 300 * flops.flops_per_token(base)) <= flops.flops_per_token(config) / 2  # to the nearest step
        assert math.ceil(loop.steps / loop.eval_every) == 4  # as many evaluations (each multiple, and the end)
    assert flops.loop(mqa, 1e-3).steps > 300 > flops.loop(swiglu, 1e-3).steps
    assert Recipe(model=BASE, train=TrainConfig(steps=300)).loop(mqa, 5e-4).steps == 300  # tokens: the same steps


def test_a_learning_rate_is_chosen_per_variant_on_a_validation_split_of_the_training_text(corpus, tmp_path):
    rates = (1e-4, 3e-3)
    results = run_experiment(tmp_path, corpus, recipe(lrs=rates), ["rope"], workers=InProcess(threads=1))
    for variant in ("baseline", "rope"):
        tried = {lr: json.loads((tmp_path / "sweep" / f"{run_name(variant, 0)}-lr{lr:g}" / "result.json").read_text())
                 for lr in rates}
        assert {r["scored_on"] for r in tried.values()} == {"validation"}
        best = min(rates, key=lambda lr: tried[lr]["bits_per_byte"])
        assert {r["lr"] for r in results if r["variant"] == variant} == {best}
    assert recipe().loop(BASE, 1e-4).min_lr == pytest.approx(1e-5)  # the floor keeps its share of the rate (0.1)
    assert {r["scored_on"] for r in results} == {"held_out"}
    run = Run(tmp_path, corpus.directory, "baseline", 0, BASE, recipe().train, 32, "validation")
    training, scored, _ = split(run)  # the sweep trains on the first 90% and scores on the rest: never the held-out text
    cut = len(corpus.train) - int(len(corpus.train) * VALIDATION)
    assert (training == corpus.train[:cut]).all() and (scored == corpus.train[cut:]).all()


@pytest.mark.parametrize("fields, message", [
    ({"match": "steps"}, "match must be one of"),
    ({"lrs": (1e-3, 1e-3)}, "lrs must be distinct"),
    ({"lrs": (0.0,)}, "a learning rate of lrs"),
])
def test_a_bad_budget_or_sweep_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        recipe(**fields)


def test_bad_workers_are_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="workers must be RayWorkers"):
        run_experiment(tmp_path, corpus, recipe(), [], workers="ray")
    with pytest.raises(ValueError, match="threads"):
        RayWorkers(threads=0)
    with pytest.raises(ValueError, match="a Ray cluster's address"):
        RayWorkers(address="")
