"""The newer features keep the README's promise: a bad input is a result or one clear ValueError,
never silent nonsense, an error from deep inside torch, or a hang. By class: training options,
resumable states, fast paths applied in sequence, analysis arguments, tokenizer files."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minigpt import GPT, GPTConfig, Tokenizer, analysis
from minigpt.fast import compile_step, optimize
from minigpt.training import TokenWindows, TrainConfig, train
from minigpt.training.state import save_state

TINY = GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32)
ODD = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, 0.5, 2.5, 1e30, -1e-9, True, False, "3", None]),
                st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True))
FIELDS = ["steps", "batch", "accumulate", "lr", "min_lr", "warmup", "weight_decay", "beta2", "clip", "eval_every",
          "save_every", "dtype"]


def windows(seed: int = 0) -> TokenWindows:
    return TokenWindows(torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(seed)), 8, seed)


@given(field=st.sampled_from(FIELDS), value=ODD)
def test_every_train_config_option_is_a_config_or_one_value_error(field, value):
    try:
        config = TrainConfig(**{field: value})
    except ValueError as err:
        # named: the field, or the one it contradicts (lr=1e-180 is below the default min_lr)
        assert str(err).startswith(field) or (field == "lr" and str(err).startswith("min_lr")), err
        return
    # accepted: then it is a value a run can use
    assert getattr(config, field) == value
    assert config.lr > 0 and 0 <= config.min_lr <= config.lr and config.clip > 0 and config.weight_decay >= 0
    assert all(isinstance(getattr(config, n), int) and not isinstance(getattr(config, n), bool) and getattr(config, n) >= 1
               for n in ("steps", "batch", "accumulate", "eval_every", "save_every"))


def test_a_model_train_cannot_train_is_refused_before_a_step():
    data = windows()
    for model, message in [
        (GPT(TINY).half(), "keeps the parameters in float32"),
        (optimize(GPT(TINY), weights="float32"), "for inference only"),
        ("gpt2", "train takes a model"),
    ]:
        with pytest.raises(ValueError, match=message):
            train(model, data, data, TrainConfig(steps=1, batch=2))
    with pytest.raises(ValueError, match="resume=True needs the state_path"):
        train(GPT(TINY), data, data, TrainConfig(steps=1, batch=2), resume=True)


def test_a_diverging_run_stops_with_the_step_and_the_learning_rate():
    torch.manual_seed(0)
    model = GPT(TINY)
    with torch.no_grad():
        model.wte.weight.mul_(1e37)  # the first forward pass overflows: the loss is not finite
    with pytest.raises(ValueError, match=r"the training loss became (nan|inf) at step 1 \(learning rate"):
        train(model, windows(), windows(), TrainConfig(steps=3, batch=2, warmup=1))


@pytest.fixture
def saved(tmp_path):
    """A state saved by a 4-step run of TINY, and the settings it ran with."""
    torch.manual_seed(0)
    config = TrainConfig(steps=4, batch=2, warmup=1, save_every=2, eval_every=2)
    path = tmp_path / "training-state.pt"
    run = GPT(TINY)
    train(run, windows(), windows(), config, state_path=path)
    return path, config


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(path.read_bytes()[:200]), "it is not a training state this loop wrote"),
    (lambda path: path.write_bytes(b"not a state"), "it is not a training state this loop wrote"),
    (lambda path: torch.save({"model": {}, "step": 2}, path), "the state is incomplete, it lacks optimizer, history"),
    (lambda path: torch.save([1, 2], path), "it holds a list, not a training state"),
])
def test_a_corrupt_or_incomplete_state_is_named_and_the_model_untouched(saved, damage, message):
    path, config = saved
    damage(path)
    model = GPT(TINY)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        train(model, windows(), windows(), config, state_path=path, resume=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_state_of_another_model_shape_is_named_before_anything_is_loaded(saved):
    path, config = saved
    other = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=50, n_positions=32))
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match=r"saved by a model of another shape: .*misshapen wte.weight \[50, 16\] "
                                         r"\(this model: \[50, 32\]\)"):
        train(other, windows(), windows(), config, state_path=path, resume=True)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_save_state_replaces_the_file_whole(saved):
    path, config = saved
    model = GPT(TINY)
    optimizer = torch.optim.AdamW(model.parameters())
    save_state(path, model, optimizer, windows(), 2, [], config)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".partial")]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_fast_paths_refuse_a_second_application():
    model = optimize(GPT(TINY), weights="int8")
    for weights in ("float32", "bfloat16", "int8"):
        with pytest.raises(ValueError, match=r"already optimized \(.*Int8"):
            optimize(model, weights=weights)
    with pytest.raises(ValueError, match="mode must be one of"):
        compile_step(GPT(TINY), mode="fastest")
    compiled = compile_step(GPT(TINY))  # compiling is lazy: nothing runs until the first step
    with pytest.raises(ValueError, match="already compiled"):
        compile_step(compiled)
    with pytest.raises(ValueError, match="already optimized"):
        optimize(compiled)


def test_analysis_names_what_is_wrong():
    model, ids = GPT(TINY), torch.tensor([[1, 2, 3, 4]])
    for call, name in [(analysis.lm_loss, "lm_loss"), (analysis.attention_entropy, "attention_entropy"),
                       (analysis.logit_lens, "logit_lens"), (analysis.head_importance, "head_importance")]:
        with pytest.raises(ValueError, match=f"{name} takes a minigpt GPT"):
            call("gpt2", ids)
    with pytest.raises(ValueError, match="attention_mask goes with a single batch"):
        analysis.head_importance(model, [(ids, None)], torch.ones_like(ids))
    with pytest.raises(ValueError, match=r"batch 0 must be an \(input_ids, attention_mask\) pair"):
        analysis.head_importance(model, [ids])
    with torch.no_grad():  # it needs a gradient, and takes it itself
        assert torch.equal(analysis.head_importance(model, ids), analysis.head_importance(model, ids))
    huge = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=4, vocab_size=50257, n_positions=1024))
    with pytest.raises(ValueError, match="logit_lens of 64 x 1024 tokens .* needs"):
        analysis.logit_lens(huge, torch.zeros(64, 1024, dtype=torch.long))


@pytest.mark.parametrize("vocab, merges, message", [
    ("symbols", "Ġ Ġ", r"symbol '中' is not written in the 256 byte stand-in characters"),
    ("bytes", "Ġ zz", r"line 1: 'zz' is not in the vocabulary"),
])
def test_tokenizer_files_are_checked_whole_at_load(tmp_path, vocab, merges, message):
    import json

    from minigpt.tokenizer import bytes_to_unicode

    encoder = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    encoder["ĠĠ"] = 256
    if vocab == "symbols":
        encoder["中"] = 257
    (tmp_path / "vocab.json").write_text(json.dumps(encoder))
    (tmp_path / "merges.txt").write_text(merges)
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")


def test_a_tokenizer_learns_from_text_with_a_lone_surrogate_as_encode_reads_it():
    text = "abc \ud800 abc abc hello hello " * 20
    tokenizer = Tokenizer.train(text, 266)
    assert tokenizer.decode(tokenizer.encode("abc \ud800")) == "abc \ufffd"


def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    from weights import load_gpt2, save_gpt2

    directory = save_gpt2(GPT(TINY), tmp_path / "ckpt")
    (directory / "model.safetensors").unlink()
    os.mkfifo(directory / "model.safetensors")
    with pytest.raises(ValueError, match="is not a regular file"):
        load_gpt2(directory)


def test_a_cache_of_another_model_and_meta_ids_are_refused():
    model = GPT(TINY)
    other = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32))
    with pytest.raises(ValueError, match="the cache was made for another model: 2 layers"):
        model(torch.tensor([[1, 2]]), cache=other.new_cache(1, 8))
    with pytest.raises(ValueError, match="the cache holds torch.float64"):
        model(torch.tensor([[1, 2]]), cache=GPT(TINY).double().new_cache(1, 8))
    with pytest.raises(ValueError, match="input_ids is on the meta device"):
        model(torch.zeros(1, 2, dtype=torch.long, device="meta"))


def test_a_local_path_that_does_not_exist_is_named_as_one_with_the_nearest_name(tmp_path, monkeypatch):
    from weights import locate

    (tmp_path / "weights" / "shakespeare").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for typed in ("weights/shakspeare", "./weights/shakspeare"):
        with pytest.raises(ValueError, match=r"weights path weights/shakspeare does not exist \(did you mean "
                                             r"weights/shakespeare\?\)"):
            locate(typed)
    with pytest.raises(ValueError, match="weights path ~nobody-here/gpt2 does not exist: ~nobody-here names no home"):
        locate("~nobody-here/gpt2")
    with pytest.raises(ValueError, match="is not cached"):  # a bare name, or owner/name with no such local owner
        locate("someone/gpt9")


def test_a_config_of_a_hundred_million_layers_is_refused_at_once(tmp_path):
    import json
    import time

    from weights import load_gpt2, save_gpt2

    directory = save_gpt2(GPT(TINY), tmp_path / "ckpt")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"n_layer": 10**8}))
    start = time.monotonic()
    with pytest.raises(ValueError, match="says n_layer=100000000, but it holds blocks h.0 to h.0"):
        load_gpt2(directory)
    assert time.monotonic() - start < 2
