"""The experiment runner (minigpt.training.experiment): variants named and checked, every run of a
seed on the same data, interrupted experiments kept and resumed exactly."""

from __future__ import annotations

import json

import pytest

from minigpt import GPTConfig
from minigpt.training import TrainConfig
from minigpt.training.experiment import InProcess, Recipe, run_experiment, summary, table, variant_config

BASE = GPTConfig(n_layer=1, n_head=4, n_embd=16, vocab_size=2048, n_positions=32)


@pytest.fixture(scope="module")
def corpus(experiment_corpus):
    return experiment_corpus


def grid(*args, **options) -> list[dict]:
    """run_experiment with its runs trained here, one thread each (tests/test_experiment_grid.py runs them on Ray)."""
    return run_experiment(*args, workers=InProcess(threads=1), **options)


def recipe(steps: int = 4, seeds=(0, 1)) -> Recipe:
    return Recipe(model=BASE, train=TrainConfig(steps=steps, batch=2, warmup=1, eval_every=2, save_every=1), seeds=seeds)


def test_variant_names_become_config_fields():
    assert variant_config(BASE, "baseline") == BASE
    assert variant_config(BASE, "rope,rmsnorm").components == {"position": "rope", "norm": "rmsnorm"}
    assert variant_config(BASE, "gqa").n_kv_head == 2 and variant_config(BASE, "gqa:1").n_kv_head == 1
    assert variant_config(BASE, "mqa,swiglu,qk-norm,window:5").components == {
        "mlp": "swiglu", "n_kv_head": 1, "qk_norm": True, "window": 5}


@pytest.mark.parametrize("name, message", [
    ("", "a variant is named by a string"),
    ("rope,nope", "unknown variant 'nope'"),
    ("rope,alibi", "rope and alibi both set the model's position"),
    ("rmsnorm,layernorm", "rmsnorm and layernorm both set the model's norm"),
    ("gqa:3", "n_kv_head (3) must divide n_head (4)"),
    ("gqa:x", "after the colon comes a positive whole number"),
])
def test_a_bad_variant_is_one_clear_error(name, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        variant_config(BASE, name)


def test_a_budget_too_small_for_one_evaluation_is_refused():
    with pytest.raises(ValueError, match="too small for one evaluation"):
        Recipe(model=BASE, train=TrainConfig(steps=3, eval_every=4))


def test_every_seed_sees_the_same_data_and_start_whatever_the_variant(corpus, tmp_path):
    """'learned' swaps in GPT-2's own position embedding: the baseline itself, so its runs must
    come out identical, seed for seed; a real swap does not."""
    results = grid(tmp_path, corpus, recipe(), ["learned", "rope"])
    scores = {(r["variant"], r["seed"]): r["bits_per_byte"] for r in results}
    for seed in (0, 1):
        assert scores[("learned", seed)] == scores[("baseline", seed)]
        assert scores[("rope", seed)] != scores[("baseline", seed)]
    assert scores[("baseline", 0)] != scores[("baseline", 1)]  # the seeds differ
    rows = summary(results)
    assert [row["variant"] for row in rows] == ["baseline", "learned", "rope"] and rows[1]["change"] == 0
    assert "| rope |" in table(rows)
    assert all(len(r["curve"]) == 2 and r["curve"][-1]["tokens"] == 4 * 2 * 32 for r in results)


def test_an_interrupted_experiment_keeps_its_finished_runs_and_resumes_exactly(corpus, tmp_path):
    whole = grid(tmp_path / "whole", corpus, recipe(), ["rope"])

    def interrupt(variant, seed, record):
        if variant == "rope" and seed == 0 and record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        grid(tmp_path / "cut", corpus, recipe(), ["rope"], report=interrupt)
    finished = sorted(p.parent.name for p in (tmp_path / "cut").glob("*/result.json"))
    assert finished == ["baseline-seed0", "baseline-seed1"]
    kept = (tmp_path / "cut" / "baseline-seed0" / "result.json").read_text()
    trained = []
    again = grid(tmp_path / "cut", corpus, recipe(), ["rope"],
                           report=lambda variant, seed, record: trained.append((variant, seed, record["step"])))
    # step 3 was not saved (it was interrupted as it reported): the run goes on from step 2's state
    assert trained == [("rope", 0, 3), ("rope", 0, 4), ("rope", 1, 1), ("rope", 1, 2), ("rope", 1, 3), ("rope", 1, 4)]
    assert (tmp_path / "cut" / "baseline-seed0" / "result.json").read_text() == kept
    assert [r["bits_per_byte"] for r in again] == [r["bits_per_byte"] for r in whole]  # resumed bit for bit


def test_a_directory_holds_one_recipe(corpus, tmp_path):
    grid(tmp_path, corpus, recipe(steps=2, seeds=(0,)), [])
    with pytest.raises(ValueError, match="holds an experiment with another recipe"):
        grid(tmp_path, corpus, recipe(steps=4, seeds=(0,)), [])
    assert json.loads((tmp_path / "recipe.json").read_text())["train"]["steps"] == 2


def test_a_corpus_of_another_vocabulary_is_refused(corpus, tmp_path):
    other = Recipe(model=GPTConfig(**{**vars(BASE), "vocab_size": 50257}), train=recipe().train)
    with pytest.raises(ValueError, match="the corpus's tokenizer has 2048 tokens"):
        grid(tmp_path, corpus, other, [])


@pytest.mark.parametrize("name, message", [
    ("rope ", "variant 'rope ' has spaces around a part: write it 'rope'"),
    ("rope, rmsnorm", "write it 'rope,rmsnorm'"),
])
def test_a_variant_written_with_spaces_is_not_a_second_variant(name, message):
    with pytest.raises(ValueError, match=message):
        variant_config(BASE, name)


@pytest.mark.parametrize("seeds", [(True,), (2**64,), (-1,), (), (0, 0), "0", (0.5,)])
def test_seeds_torch_cannot_take_are_refused(seeds):
    with pytest.raises(ValueError, match=r"seeds must be distinct integers in \[0, 2\^64\)"):
        recipe(seeds=seeds)


def test_what_is_not_a_corpus_a_recipe_or_a_list_of_variants_is_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="corpus must be a TokenCorpus"):
        grid(tmp_path, None, recipe(), ["rope"])
    with pytest.raises(ValueError, match="recipe must be a Recipe"):
        grid(tmp_path, corpus, {"seeds": [0]}, ["rope"])
    with pytest.raises(ValueError, match="variants must be a list of names"):
        grid(tmp_path, corpus, recipe(), "rope")
    assert not any(tmp_path.iterdir())  # nothing written by a refused call


@pytest.mark.parametrize("written", ["[]", '{"variant": "baseline", "seed": 0, "cu', '{"variant": "rope", "seed": 0}'])
def test_a_result_file_that_is_not_a_finished_runs_result_is_not_taken_for_one(corpus, tmp_path, written):
    grid(tmp_path, corpus, recipe(seeds=(0,)), [])
    (tmp_path / "baseline-seed0" / "result.json").write_text(written)
    with pytest.raises(ValueError, match="baseline-seed0/result.json (is not the result of run baseline from seed 0|"
                                         "cannot be read as a run's result)"):
        grid(tmp_path, corpus, recipe(seeds=(0,)), [])
