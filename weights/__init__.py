"""Checkpoints: the public GPT-2 safetensors layout in and out, and finding it on disk.

SHAKESPEARE is the model in the box, a small GPT-2 trained on Shakespeare's plays (scripts/train.py
made it): an absolute path, so `load_gpt2(SHAKESPEARE)` works from any directory. SHAKESPEARE_DRAFT
is its draft for speculative decoding: 2 layers, 128 wide, the same tokenizer, the same corpus.
"""

from pathlib import Path

from .checkpoint import load_gpt2, load_tokenizer, save_gpt2
from .locate import find_cached, hub_cache_dir, locate

SHAKESPEARE = Path(__file__).resolve().parent / "shakespeare"
SHAKESPEARE_DRAFT = SHAKESPEARE.with_name("shakespeare-draft")

__all__ = ["load_gpt2", "load_tokenizer", "save_gpt2", "locate", "find_cached", "hub_cache_dir", "SHAKESPEARE",
           "SHAKESPEARE_DRAFT"]
