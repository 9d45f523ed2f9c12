"""Random-weight GPT-2 checkpoints, written by the tests in the public file layouts.

The files are built from transformers' own model, not by our save_gpt2, so loading them tests
our reader against the layouts found in the wild:
- "hub": the original hub file: no `transformer.` prefix, causal-mask buffers `h.N.attn.bias`
  (float32 [1, 1, n_positions, n_positions]) and `h.N.attn.masked_bias`, no `lm_head.weight`;
- "transformers": what `save_pretrained` writes today: `transformer.` prefix, no buffers.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from hypothesis import strategies as st
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from minigpt import GPTConfig
from weights import load_gpt2

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", module="transformers")

LAYOUTS = ("hub", "transformers")


@st.composite
def small_configs(draw) -> GPTConfig:
    n_head = draw(st.integers(1, 4))
    head_dim = draw(st.sampled_from([1, 3, 5, 8, 16]))  # odd head sizes included
    return GPTConfig(
        n_layer=draw(st.integers(1, 3)),
        n_head=n_head,
        n_embd=n_head * head_dim,
        n_inner=draw(st.sampled_from([None, 7, 24])),
        vocab_size=draw(st.integers(2, 80)),
        n_positions=draw(st.integers(4, 24)),
    )


def hf_config(config: GPTConfig) -> GPT2Config:
    eos = 50256 if config.vocab_size > 50256 else None
    return GPT2Config(
        n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd, n_inner=config.n_inner,
        vocab_size=config.vocab_size, n_positions=config.n_positions,
        layer_norm_epsilon=config.layer_norm_epsilon, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=eos, eos_token_id=eos,
    )


def random_reference(config: GPTConfig, seed: int = 0, peak: float = 1.0, block_gain: float = 1.0) -> GPT2LMHeadModel:
    """transformers' GPT-2 with random weights. peak > 1 scales the (tied) embedding, which
    sharpens the logits so that near-ties do not decide a decoding test. A random GPT-2 with
    tied embeddings mostly predicts its input token again; block_gain > 1 scales the MLP and
    attention output weights so the blocks, not the embedding, decide the next token."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(hf_config(config)).eval()
    with torch.no_grad():
        # LayerNorms start at exactly (1, 0); perturb them so a swapped weight and bias would show
        for name, p in model.named_parameters():
            if ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
        model.transformer.wte.weight.mul_(peak)
        for name, p in model.named_parameters():
            if name.endswith(("c_proj.weight", "c_fc.weight")):
                p.mul_(block_gain)
    return model


def write_checkpoint(model: GPT2LMHeadModel, directory: Path, layout: str) -> Path:
    """Write `model` as config.json + model.safetensors in one of the public layouts."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    cfg = model.config
    if layout == "hub":
        state = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
        n = cfg.n_positions
        for i in range(cfg.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    elif layout == "transformers":
        state.pop("lm_head.weight")  # tied to wte; save_pretrained drops the duplicate
    else:
        raise ValueError(layout)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    fields = cfg.to_diff_dict() | {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}
    (directory / "config.json").write_text(json.dumps(fields, indent=2))
    return directory


def reference_and_ours(config: GPTConfig, layout: str, tmp_path: Path, seed: int = 0, eager: bool = False,
                       **load_kwargs):
    """transformers' random GPT-2, and ours loaded from the checkpoint it was written to. eager:
    transformers' attention kernel that forms attention patterns (its default is the fused one)."""
    reference = random_reference(config, seed)
    if eager:
        reference.set_attn_implementation("eager")
    directory = write_checkpoint(reference, tmp_path / f"{layout}-{seed}", layout)
    return reference, load_gpt2(directory, **load_kwargs)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def fake_hub_cache(cache, checkpoint, repo, commit="0123abcd"):
    """The real hub cache layout: snapshot files are links into the model's blobs/ folder."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "snapshots" / commit).mkdir(parents=True)
    for file in checkpoint.iterdir():
        blob = repo_dir / "blobs" / f"blob-{file.name}"
        shutil.copy(file, blob)
        (repo_dir / "snapshots" / commit / file.name).symlink_to(os.path.relpath(blob, repo_dir / "snapshots" / commit))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return repo_dir


def left_padded(vocab_size: int, seed: int = 0, lengths=(9, 5, 7)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (b t) and a left-padded mask: row i holds lengths[i] real tokens at its end."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(0, vocab_size, (len(lengths), width), generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, width - n:] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """The position ids a left-padded batch needs in transformers' plain forward (counted over
    real tokens), which minigpt derives from the mask itself."""
    return (mask.cumsum(-1) - 1).clamp(min=0)
