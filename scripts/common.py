"""What the command-line scripts share: choosing a device and dtype, and getting a model."""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
from pathlib import Path

import torch

from minigpt import GPT, GPTConfig, pack_for_cpu
from weights import find_cached, load_gpt2, locate, save_gpt2

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", help="checkpoint directory or hub name (gpt2, gpt2-medium, ...); "
                        "default: gpt2 from the Hugging Face cache if it is there, else random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--pack", action="store_true", help="CPU float32: pack the weights for oneDNN "
                        "(pack_for_cpu), the same model 1.3-2x faster at decoding")


def load_model(args: argparse.Namespace) -> tuple[GPT, Path, str]:
    """The model the arguments ask for, its checkpoint directory, and a line that says what it is."""
    directory, what = checkpoint_from(args)
    model = load_gpt2(directory, device=args.device, dtype=DTYPES[args.dtype])
    if args.pack:
        return pack_for_cpu(model), directory, what + " (packed for CPU)"
    return model, directory, what


def random_gpt2_checkpoint(preset: str = "gpt2", seed: int = 0) -> Path:
    """A random-weight GPT-2 of the preset's shape, written in the public layout to a temp dir."""
    torch.manual_seed(seed)
    directory = Path(tempfile.mkdtemp(prefix=f"minigpt-random-{preset}-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)  # ~0.5 GB for the 124M shape
    return save_gpt2(GPT(GPTConfig.preset(preset)), directory)


def checkpoint_from(args: argparse.Namespace) -> tuple[Path, str]:
    """The checkpoint directory the arguments ask for, and a line that says what it is."""
    if args.weights:
        directory = locate(args.weights)
        return directory, f"weights: {directory}"
    cached = find_cached("gpt2")
    if cached is not None:
        return cached, f"weights: gpt2 from the Hugging Face cache ({cached})"
    return random_gpt2_checkpoint(), "weights: random GPT-2 124M (no --weights given and gpt2 is not cached)"


def add_decoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampling generator")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 is off (transformers defaults to 50 when sampling)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--early-stopping", choices=["true", "false", "never"], default="false")
    parser.add_argument("--num-return-sequences", type=int, default=1)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--min-new-tokens", type=int, default=0)


def shared_options(args: argparse.Namespace, eos_token_id: int) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, eos_token_id=eos_token_id, min_new_tokens=args.min_new_tokens,
                no_repeat_ngram_size=args.no_repeat_ngram_size, repetition_penalty=args.repetition_penalty)


def early_stopping(value: str) -> bool | str:
    return {"true": True, "false": False, "never": "never"}[value]
