"""Bad checkpoints and bad arguments to load_gpt2 / save_gpt2: each one ValueError of a few lines
naming the tensor, the key, the file or the argument, raised before the weights are read where
the problem shows in the headers."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import fake_hub_cache, random_reference, write_checkpoint
from minigpt import GPT, GPTConfig, gpt2_block
from weights import load_gpt2, save_gpt2

TINY = GPTConfig.preset("tiny")
MAX_LINES = 4  # "no error message is longer than a few lines"


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(random_reference(TINY, 3), tmp_path / "ckpt", "hub")


def refused(call, match: str) -> str:
    with pytest.raises(ValueError, match=match) as error:
        call()
    message = str(error.value)
    assert len(message.splitlines()) <= MAX_LINES and len(message) < 1200, message
    return message


def rewrite(directory, change) -> None:
    """Apply `change` to the checkpoint's tensors and write them back."""
    tensors = load_file(str(directory / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(directory / "model.safetensors"))


def set_config(directory, **fields) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | fields))


# ---- values that overflow the requested dtype ---------------------------------------------------

def test_float64_weight_beyond_float32_is_named(checkpoint):
    def change(t):
        t["h.1.mlp.c_fc.bias"] = t["h.1.mlp.c_fc.bias"].double()
        t["h.1.mlp.c_fc.bias"][0] = 1e39
    rewrite(checkpoint, change)
    refused(lambda: load_gpt2(checkpoint), r"tensor h\.1\.mlp\.c_fc\.bias overflows torch\.float32: .*1e\+39")
    assert load_gpt2(checkpoint, dtype=torch.float64).dtype == torch.float64  # it fits a wider type


def test_float32_weight_beyond_float16_is_named(checkpoint):
    rewrite(checkpoint, lambda t: t["wpe.weight"].__setitem__((3, 4), 70000.0))
    refused(lambda: load_gpt2(checkpoint, dtype=torch.float16), r"tensor wpe\.weight overflows torch\.float16: .*7e\+04")
    load_gpt2(checkpoint, dtype=torch.float32)


@pytest.mark.parametrize("dtype, name", [(torch.int64, "I64"), (torch.bool, "BOOL"), (torch.int8, "I8")])
def test_integer_and_bool_weights_are_refused(checkpoint, dtype, name):
    rewrite(checkpoint, lambda t: t.__setitem__("h.0.ln_1.weight", t["h.0.ln_1.weight"].to(dtype)))
    refused(lambda: load_gpt2(checkpoint), rf"not floating point: h\.0\.ln_1\.weight is {name}")


# ---- a checkpoint reads only its own directory --------------------------------------------------

def test_shard_index_pointing_outside_is_refused(checkpoint, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(checkpoint / "model.safetensors", outside)
    (checkpoint / "model.safetensors").unlink()
    names = list(load_file(str(outside)))
    index = {"weight_map": {name: "../outside.safetensors" for name in names}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(lambda: load_gpt2(checkpoint), r"entry '\.\./outside\.safetensors' points outside the checkpoint")
    index = {"weight_map": {name: str(outside) for name in names}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(lambda: load_gpt2(checkpoint), "is an absolute path")


@pytest.mark.parametrize("file", ["model.safetensors", "config.json"])
def test_symlink_out_of_the_checkpoint_is_refused(checkpoint, tmp_path, file):
    elsewhere = tmp_path / f"elsewhere-{file}"
    shutil.move(checkpoint / file, elsewhere)
    (checkpoint / file).symlink_to(elsewhere)
    refused(lambda: load_gpt2(checkpoint), rf"{file} points outside the checkpoint")


def test_hub_cache_links_into_blobs_are_inside_the_checkpoint(checkpoint, tmp_path, monkeypatch):
    fake_hub_cache(tmp_path / "hub", checkpoint, "openai-community/gpt2")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    assert load_gpt2("gpt2").config == TINY


@pytest.mark.parametrize("ref", ["../../../elsewhere", "/etc", "main/../x"])
def test_hub_ref_that_is_not_a_commit_is_refused(checkpoint, tmp_path, monkeypatch, ref):
    repo_dir = fake_hub_cache(tmp_path / "hub", checkpoint, "openai-community/gpt2")
    (repo_dir / "refs" / "main").write_text(ref)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    refused(lambda: load_gpt2("gpt2"), r"refs/main holds .* which is not a commit hash")


# ---- config.json: types, and sizes checked against the tensors before anything is built -------

@pytest.mark.parametrize("fields, message", [
    ({"n_layer": True}, "n_layer must be an integer, got bool True"),
    ({"n_embd": 32.0}, "n_embd must be an integer, got float 32.0"),
    ({"n_inner": 128.0}, "n_inner must be an integer, got float 128.0"),
    ({"n_inner": True}, "n_inner must be an integer, got bool True"),
    ({"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon must be a number, got str '1e-5'"),
    ({"layer_norm_epsilon": False}, "layer_norm_epsilon must be a number, got bool False"),
    ({"resid_pdrop": "0.1", "embd_pdrop": "0.1", "attn_pdrop": "0.1"}, "resid_pdrop must be a number, got str"),
    ({"n_ctx": "64"}, "n_ctx must be an integer, got str"),
    ({"scale_attn_weights": 1}, "scale_attn_weights=1 is not supported"),
    ({"vocab_size": None}, "vocab_size must be an integer, got NoneType None"),
])
def test_config_value_of_the_wrong_type_names_key_and_type(checkpoint, fields, message):
    set_config(checkpoint, **fields)
    refused(lambda: load_gpt2(checkpoint), message)


def test_absurd_layer_count_is_refused_at_once(checkpoint):
    set_config(checkpoint, n_layer=10**6)
    start = time.monotonic()
    refused(lambda: load_gpt2(checkpoint), r"says n_layer=1000000, but it holds blocks h\.0 to h\.1 \(2\)")
    assert time.monotonic() - start < 5  # compared with the tensor names, not by building a million blocks


def test_sizes_that_disagree_with_the_tensors_make_a_short_message(checkpoint):
    set_config(checkpoint, n_embd=64, n_head=2, vocab_size=10**9)  # every tensor misshapen
    message = refused(lambda: load_gpt2(checkpoint), r"misshapen: wte\.weight: expected \[1000000000, 64\], found \[101, 32\]")
    assert "..." in message  # the list is cut, not 26 lines long


# ---- arguments ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": torch.int8}, "dtype must be one of torch's float32, float16, bfloat16, float64, got torch.int8"),
    ({"dtype": "float16"}, "dtype must be one of torch's"),
    ({"device": "banana"}, "device 'banana' is not a device name"),
    ({"device": 3.5}, "device must be a string"),
    ({"make_block": None}, "make_block must be a function"),
    ({"make_block": lambda config: torch.nn.Linear(2, 2)}, "the model built by make_block does not hold GPT-2's parameters"),
])
def test_bad_load_arguments(checkpoint, kwargs, message):
    refused(lambda: load_gpt2(checkpoint, **kwargs), message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_refused(checkpoint):
    refused(lambda: load_gpt2(checkpoint, device="cuda"), "CUDA is not available on this machine")


@pytest.mark.parametrize("source", ["", None, 3])
def test_empty_or_missing_source_is_refused(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "" must not quietly mean the current directory
    refused(lambda: load_gpt2(source), "weights must be a checkpoint directory or a hub name")


def test_file_that_exists_but_cannot_be_read_says_so(checkpoint, monkeypatch):
    target = checkpoint / "model.safetensors"
    if os.geteuid() == 0:  # root reads any file whatever its mode; make the open fail as it would for a user
        real_open = pathlib.Path.open

        def denying_open(self, *args, **kwargs):
            if self == target:
                raise PermissionError(13, "Permission denied")
            return real_open(self, *args, **kwargs)
        monkeypatch.setattr(pathlib.Path, "open", denying_open)
    else:
        target.chmod(0)
    refused(lambda: load_gpt2(checkpoint), "model.safetensors exists but cannot be read: permission denied")


def test_save_refuses_what_it_must_not_write(checkpoint, tmp_path):
    model = GPT(TINY)
    refused(lambda: save_gpt2(model, checkpoint), "already holds a checkpoint; pass overwrite=True")
    save_gpt2(model, checkpoint, overwrite=True)
    assert torch.equal(load_gpt2(checkpoint).wte.weight, model.wte.weight)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    refused(lambda: save_gpt2(model, a_file), "it exists and is not a directory")
    refused(lambda: save_gpt2(gpt2_block(TINY), tmp_path / "new"), "save_gpt2 saves a minigpt GPT, got TransformerBlock")
    refused(lambda: save_gpt2(model, ""), "save_gpt2 needs a directory path")


def test_a_checkpoints_tokenizer_is_its_own_or_gpt2s_and_never_a_guess(checkpoint, tmp_path):
    from minigpt import Tokenizer
    from weights import load_tokenizer
    refused(lambda: load_tokenizer(checkpoint), "no vocab.json and merges.txt, and its vocabulary of 101 tokens is not GPT-2's")
    learned = Tokenizer.train("the cat sat on the mat " * 20, 265)
    learned.save(checkpoint)
    assert load_tokenizer(checkpoint).encode("the mat") == learned.encode("the mat")
    (checkpoint / "merges.txt").unlink()
    refused(lambda: load_tokenizer(checkpoint), "tokenizer file not found: .*merges.txt")
    full = save_gpt2(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=4, vocab_size=50257, n_positions=8)), tmp_path / "full")
    assert load_tokenizer(full).encode("Hello world") == [15496, 995]  # GPT-2's, for GPT-2's vocabulary


@pytest.mark.parametrize("name", ["gpt2", "gpt2-xl", "distilgpt2", "openai-community/gpt2-medium"])
def test_a_public_gpt2_names_tokenizer_needs_no_download(name, tmp_path, monkeypatch):
    """Every public GPT-2 uses GPT-2's BPE, which ships with the install: offline, with an empty
    Hugging Face cache, load_tokenizer gives it instead of asking for a download."""
    from weights import load_tokenizer
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_tokenizer(name).encode("Hello world") == [15496, 995]
