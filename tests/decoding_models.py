"""A small, peaked random GPT-2 shared by the decoder tests, as ours and as transformers'.

The embedding is scaled up so logits are peaked, and the blocks' weights so that the model
does not just repeat its input. On these prompts the top-1 margin is 0.2..0.3 nats typically
and about 2e-3 at its smallest: a thousand times the 1e-6 float differences between the two
implementations, so the tests compare the algorithms, not rounding.
Token 1 serves as pad, so pad != EOS is exercised.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

import decoders
from helpers import random_reference, write_checkpoint
from minigpt import GPTConfig
from minigpt.fast import compile_step, optimize
from weights import load_gpt2

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64)
PAD = 1


@functools.cache
def checkpoint():
    reference = random_reference(CONFIG, seed=12, peak=8.0, block_gain=20.0)
    return write_checkpoint(reference, Path(tempfile.mkdtemp()) / "peaked", "hub"), reference


@functools.cache
def models():
    directory, reference = checkpoint()
    return load_gpt2(directory), reference


@functools.cache
def fast_model(compiled: bool = False):
    """The same weights made fast: minigpt.fast.optimize(model), float32; with `compiled`, its
    decoding step compiled too (compile_step)."""
    directory, _ = checkpoint()
    model = optimize(load_gpt2(directory))
    return compile_step(model) if compiled else model


def prompts(seed: int = 0, lengths=(6, 3, 5)):
    """A left-padded batch of prompts of the given lengths, and its mask."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(2, CONFIG.vocab_size, (n,), generator=g)
        mask[row, width - n :] = 1
    return ids, mask


def frequent_token(ids, mask) -> int:
    """A token that greedy decoding produces early, to serve as EOS so rows finish at different times."""
    ours, _ = models()
    out = decoders.greedy(ours, ids, attention_mask=mask, max_new_tokens=4)
    return int(out.new_tokens[0, 1])
