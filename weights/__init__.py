"""Checkpoints: the public GPT-2 safetensors layout in and out, and finding it on disk."""

from .checkpoint import load_gpt2, load_tokenizer, save_gpt2
from .locate import find_cached, hub_cache_dir, locate

__all__ = ["load_gpt2", "load_tokenizer", "save_gpt2", "locate", "find_cached", "hub_cache_dir"]
