"""Loading and saving checkpoints: both public layouts, shards, the hub cache, and every bad file."""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import LAYOUTS, fake_hub_cache, max_abs_diff, random_reference, write_checkpoint
from minigpt import GPT, GPTConfig
from weights import load_gpt2, save_gpt2

TINY = GPTConfig.preset("tiny")


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(random_reference(TINY, 3), tmp_path / "ckpt", "hub")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_both_layouts_load_to_the_same_model(layout, tmp_path):
    reference = random_reference(TINY, 5)
    model = load_gpt2(write_checkpoint(reference, tmp_path / layout, layout))
    ids = torch.randint(0, TINY.vocab_size, (2, 10))
    with torch.no_grad():
        assert max_abs_diff(model(ids), reference(ids).logits) <= 1e-5
    assert not model.training  # loaded for inference, like from_pretrained


def test_save_then_load_is_bit_exact_and_is_the_public_layout(tmp_path):
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    directory = save_gpt2(model, tmp_path / "saved")
    again = load_gpt2(directory)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.randint(0, TINY.vocab_size, (3, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))  # the same weights, wherever they were read from
    stored = load_file(str(directory / "model.safetensors"))
    assert "h.0.attn.c_attn.weight" in stored and not any(k.startswith("transformer.") for k in stored)
    assert stored["h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: [in, out]
    assert stored["h.1.attn.bias"].shape == (1, 1, 64, 64) and stored["h.1.attn.bias"].dtype == torch.float32
    assert "lm_head.weight" not in stored


def test_transformers_reads_what_we_save(tmp_path):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(1)
    model = GPT(TINY).eval()
    reference = GPT2LMHeadModel.from_pretrained(save_gpt2(model, tmp_path / "saved")).eval()
    ids = torch.randint(0, TINY.vocab_size, (1, 12))
    with torch.no_grad():
        assert max_abs_diff(model(ids), reference(ids).logits) <= 1e-5


def test_sharded_checkpoint(checkpoint, tmp_path):
    tensors = load_file(str(checkpoint / "model.safetensors"))
    names = sorted(tensors)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(checkpoint / "config.json", sharded)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(sharded / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: file for file, keys in halves.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    ids = torch.randint(0, TINY.vocab_size, (1, 5))
    with torch.no_grad():
        assert torch.equal(load_gpt2(sharded)(ids), load_gpt2(checkpoint)(ids))


def test_device_and_dtype_arguments(checkpoint):
    model = load_gpt2(checkpoint, device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"


def test_missing_unexpected_and_misshapen_are_all_named_at_once(checkpoint):
    tensors = load_file(str(checkpoint / "model.safetensors"))
    del tensors["h.0.ln_1.weight"]
    tensors["h.0.mlp.extra"] = torch.zeros(3)
    tensors["h.1.attn.c_proj.weight"] = torch.zeros(5, 5)
    save_file(tensors, str(checkpoint / "model.safetensors"))
    with pytest.raises(ValueError) as error:
        load_gpt2(checkpoint)
    message = str(error.value)
    assert "missing: h.0.ln_1.weight" in message
    assert "unexpected: h.0.mlp.extra" in message
    assert "h.1.attn.c_proj.weight: expected [32, 32], found [5, 5]" in message
    assert "model.safetensors" in message


def test_untied_output_head_is_refused(checkpoint):
    tensors = load_file(str(checkpoint / "model.safetensors"))
    tensors["lm_head.weight"] = torch.randn_like(tensors["wte.weight"])
    save_file(tensors, str(checkpoint / "model.safetensors"))
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        load_gpt2(checkpoint)


def test_nan_tensor_is_named(checkpoint):
    tensors = load_file(str(checkpoint / "model.safetensors"))
    tensors["h.1.mlp.c_fc.bias"][3] = float("nan")
    save_file(tensors, str(checkpoint / "model.safetensors"))
    with pytest.raises(ValueError, match=r"tensor h\.1\.mlp\.c_fc\.bias holds NaN or inf"):
        load_gpt2(checkpoint)


def test_truncated_file_is_named(checkpoint):
    path = checkpoint / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        load_gpt2(checkpoint)


def test_corrupt_header_is_named(checkpoint):
    path = checkpoint / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:16] = b"\xff" * 8  # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_gpt2(checkpoint)


def test_missing_config_json_is_named(checkpoint):
    (checkpoint / "config.json").unlink()
    with pytest.raises(ValueError, match="config file not found: .*config.json"):
        load_gpt2(checkpoint)


def test_missing_weights_file_is_named(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors or model.safetensors.index.json"):
        load_gpt2(checkpoint)


def test_path_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_gpt2(tmp_path / "nowhere")


def test_only_safetensors_are_read_never_pickles(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    torch.save({"wte.weight": torch.zeros(1)}, checkpoint / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only safetensors weights are read"):
        load_gpt2(checkpoint)


@pytest.mark.parametrize("asked, stored", [("gpt2", "openai-community/gpt2"), ("distilgpt2", "distilgpt2"),
                                           ("openai-community/gpt2-medium", "gpt2-medium")])
def test_hub_names_are_found_in_the_cache_under_either_name(asked, stored, checkpoint, tmp_path, monkeypatch):
    fake_hub_cache(tmp_path / "hub", checkpoint, stored)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # so that no local folder named like the model is found instead
    assert load_gpt2(asked).config == TINY


def test_hf_home_is_respected(checkpoint, tmp_path, monkeypatch):
    fake_hub_cache(tmp_path / "home" / "hub", checkpoint, "openai-community/gpt2")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert load_gpt2("gpt2").config == TINY


def test_offline_and_not_cached_fails_fast_saying_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"not cached.*looked in the Hugging Face cache .*empty.*gpt2-large") as error:
        load_gpt2("gpt2-large")
    assert time.monotonic() - start < 1.0
    assert "hf download openai-community/gpt2-large" in str(error.value)


def test_unreachable_hub_fails_within_a_second_even_if_connecting_hangs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)

    def hang(*args, **kwargs):  # a name lookup or connection that never answers
        time.sleep(5)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.monotonic()
    with pytest.raises(ValueError, match="cannot be reached"):
        load_gpt2("gpt2")
    assert time.monotonic() - start < 1.0


def test_config_presets_have_the_published_shapes():
    shapes = {name: (c.n_layer, c.n_head, c.n_embd) for name in
              ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
              for c in [GPTConfig.preset(name)]}
    assert shapes == {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
                      "gpt2-xl": (48, 25, 1600), "distilgpt2": (6, 12, 768)}


DISTILGPT2_CONFIG = {  # distilgpt2's config.json as published
    "_name_or_path": "distilgpt2", "_num_labels": 1, "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1, "bos_token_id": 50256, "embd_pdrop": 0.1,
    "eos_token_id": 50256, "gradient_checkpointing": False, "id2label": {"0": "LABEL_0"},
    "initializer_range": 0.02, "label2id": {"LABEL_0": 0}, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
    "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_inner": None, "n_layer": 6, "n_positions": 1024,
    "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
    "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}, "vocab_size": 50257,
}


def test_published_config_reads_as_its_preset():
    config = GPTConfig.from_hf_dict(DISTILGPT2_CONFIG)
    assert config == GPTConfig(n_layer=6, dropout=0.1)


@pytest.mark.parametrize("change, message", [
    ({"n_embd": 770}, "n_embd \\(770\\) must be divisible by n_head \\(12\\)"),
    ({"activation_function": "relu"}, "activation_function='relu' is not supported"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True is not supported"),
    ({"rotary_dim": 64}, "unknown config field\\(s\\) rotary_dim"),
    ({"n_ctx": 512}, "n_ctx \\(512\\) and n_positions \\(1024\\) disagree"),
    ({"attn_pdrop": 0.0}, "one dropout rate"),
    ({"n_layer": 0}, r"n_layer must be in \[1, inf\), got 0"),
])
def test_unknown_or_inconsistent_config_is_a_clear_error(change, message, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(DISTILGPT2_CONFIG | change))
    with pytest.raises(ValueError, match=message):
        GPTConfig.from_json(path)


def test_config_json_that_is_not_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        GPTConfig.from_json(path)
