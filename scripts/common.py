"""What the command-line scripts share: the parser and its error convention, choosing a device and
dtype, getting a model, and turning a prompt into ids.

A user error (a bad option, a checkpoint that does not load, a prompt the vocabulary cannot hold)
is one line `error: ...` on stderr naming the option, and exit status 2, argparse's convention;
never a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NoReturn

import torch

import decoders
from decoders import DecodingOptions
from decoders.options import check_sampling
from minigpt import GPT, GPTConfig, Tokenizer
from minigpt.fast import WEIGHT_FORMATS, optimize
from minigpt.checks import check_device
from weights import (SHAKESPEARE, SHAKESPEARE_DRAFT, find_cached, hub_cache_dir, load_gpt2, load_tokenizer, locate,
                     save_gpt2)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are one line, `error: <message>`, and exit status 2."""

    def __init__(self, description: str | None):
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message: str) -> NoReturn:
        print(f"error: {' '.join(message.split())}", file=sys.stderr)  # newlines folded: one line
        sys.exit(2)


def run(main: Callable[[argparse.Namespace], int], parser: Parser) -> int:
    """Parse the arguments and run `main`; a ValueError (minigpt's error for every bad input) is a
    user error, reported with the options named as the user typed them (num_beams -> --num-beams)."""
    args = parser.parse_args()
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    try:
        return main(args)
    except ValueError as err:
        parser.error(_with_flags(str(err), parser))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)  # on a line of its own, not after the progress bar
        return 130


def _with_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """Spell a library argument name (num_beams) as the option the user typed (--num-beams).
    A single word (temperature, device) may be ordinary English, so it is replaced only where it
    opens the message, as its subject."""
    for action in parser._actions:
        if action.option_strings:
            where = rf"\b{action.dest}\b" if "_" in action.dest else rf"^{action.dest}\b"
            message = re.sub(where, action.option_strings[0], message)
    return message


# ---- option types: argparse calls them, and names the option when they raise ----------------

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


for _type, _name in ((positive_int, "integer"), (non_negative_int, "integer"), (finite_float, "number")):
    _type.__name__ = _name  # argparse says "invalid integer value: 'x'" for int('x')


# ---- the model ----------------------------------------------------------------------------------

SHIPPED = SHAKESPEARE  # the small model trained on Shakespeare, in weights/shakespeare
SHIPPED_DRAFT = SHAKESPEARE_DRAFT  # its draft for speculative decoding (2 layers, 128 wide)


def thread_count(text: str) -> int:
    """--threads: from 1 to this machine's CPUs; more only take turns on them, each step waiting for
    the slowest (1000 threads on 2 cores trained at 5 tokens/s)."""
    value, cpus = positive_int(text), os.cpu_count() or 1
    if value > cpus:
        raise argparse.ArgumentTypeError(f"must be at most {cpus}, this machine's CPUs; got {value}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """--threads, which `run` applies. torch starts one thread per core (or OMP_NUM_THREADS); on a
    machine busy with other work fewer can be much faster, since each step waits for its slowest thread."""
    parser.add_argument("--threads", type=thread_count, default=None,
                        help=f"CPU threads torch uses (default {torch.get_num_threads()}: one per core, or OMP_NUM_THREADS; "
                             "on a busy machine 1 can be faster)")


def add_model_arguments(parser: argparse.ArgumentParser, default: str = "shipped") -> None:
    """default: "shipped" (the Shakespeare model in weights/shakespeare), or "gpt2" (gpt2 from the
    Hugging Face cache if it is there, else a random-weight GPT-2 124M: what verify compares)."""
    described = {"shipped": f"the Shakespeare model in {SHIPPED.parent.name}/{SHIPPED.name}",
                 "gpt2": "gpt2 from the Hugging Face cache if it is there, else random weights"}[default]
    parser.set_defaults(default_weights=default)
    parser.add_argument("--weights", help=f"checkpoint directory or hub name (gpt2, gpt2-medium, ...); default: {described}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--fast", choices=WEIGHT_FORMATS, help="decode with minigpt.fast.optimize(model, weights=FAST): "
                        "float32 as loaded but faster, or bfloat16 or int8 weights (faster again, measured bounds)")
    add_threads_argument(parser)


def load_model(args: argparse.Namespace) -> tuple[GPT, Path, str, Tokenizer]:
    """The model the arguments ask for, its checkpoint directory, a line that says what it is, and
    its tokenizer."""
    option(check_device, "--device", args.device)
    directory, what = checkpoint_from(args)
    model = option(load_gpt2, "--weights", directory, device=args.device, dtype=DTYPES[args.dtype])
    # A checkpoint without tokenizer files is read with GPT-2's: its prompt ids are checked against
    # the model's vocabulary later (prompt_ids), so a mismatch is an error there, naming --prompt.
    own = (directory / "vocab.json").exists() or (directory / "merges.txt").exists()
    tokenizer = option(load_tokenizer, "--weights", directory) if own else Tokenizer.gpt2()
    if args.fast:
        return option(optimize, "--fast", model, weights=args.fast), directory, what + f" (fast, {args.fast})", tokenizer
    return model, directory, what, tokenizer


def option(function: Callable, flag: str, *args, **kwargs):
    """function(*args, **kwargs), with a ValueError said to come from the option `flag`."""
    try:
        return function(*args, **kwargs)
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from None


def random_gpt2_checkpoint(preset: str = "gpt2", seed: int = 0) -> Path:
    """A random-weight GPT-2 of the preset's shape, written in the public layout to a temp dir."""
    torch.manual_seed(seed)
    directory = Path(tempfile.mkdtemp(prefix=f"minigpt-random-{preset}-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)  # ~0.5 GB for the 124M shape
    return save_gpt2(GPT(GPTConfig.preset(preset)), directory, overwrite=True)


def checkpoint_from(args: argparse.Namespace) -> tuple[Path, str]:
    """The checkpoint directory the arguments ask for, and a line that says what it is."""
    if args.weights is not None:  # --weights "" is a mistake, not a request for random weights
        directory = option(locate, "--weights", args.weights)
        return directory, f"weights: {directory}"
    if args.default_weights == "shipped":
        if not (SHIPPED / "config.json").is_file():
            raise ValueError(f"--weights: the shipped model is missing from {SHIPPED}; give a checkpoint")
        return SHIPPED, f"weights: the Shakespeare model ({SHIPPED})"
    cached = find_cached("gpt2")
    if cached is not None:
        return cached, f"weights: gpt2 from the Hugging Face cache ({cached})"
    return random_gpt2_checkpoint(), (f"weights: a random-weight GPT-2 124M in the public file layout, because gpt2 "
                                      f"is not in the Hugging Face cache ({hub_cache_dir()}); random weights exercise "
                                      "every tensor and operation just as the real ones do")


# ---- the prompt and the decoders ----------------------------------------------------------------

def prompt_ids(tokenizer: Tokenizer, text: str, model: GPT, flag: str = "--prompt") -> torch.Tensor:
    """The text of option `flag` as a (1 t) tensor of ids on the model's device, or an error naming it."""
    if not text:
        raise ValueError(f"{flag} is empty: give some text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # the shell passed bytes that are not UTF-8 (Python keeps them as surrogates)
        raise ValueError(f"{flag} is not valid UTF-8 text") from None
    ids = tokenizer.encode(text)
    vocab = model.config.vocab_size
    if max(ids) >= vocab:
        raise ValueError(f"{flag} holds token id {max(ids)}, outside this checkpoint's vocabulary of {vocab} "
                         "tokens (the tokenizer has more tokens than the model: the checkpoint carries no tokenizer of its own?)")
    return torch.tensor([ids], device=model.device)


def add_decoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=positive_int, default=40)
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seeds the sampling generator")
    parser.add_argument("--temperature", type=finite_float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None, help="sampling: keep the k likeliest (default 0, off; "
                        "transformers uses 50); contrastive search: candidates per step (default 4)")
    parser.add_argument("--top-p", type=finite_float, default=1.0)
    parser.add_argument("--min-p", type=finite_float, default=0.0)
    parser.add_argument("--typical-p", type=finite_float, default=1.0)
    parser.add_argument("--penalty-alpha", type=finite_float, default=0.6, help="contrastive search's degeneration penalty")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--num-beam-groups", type=int, default=2, help="diverse beam search")
    parser.add_argument("--diversity-penalty", type=finite_float, default=1.0, help="diverse beam search")
    parser.add_argument("--length-penalty", type=finite_float, default=1.0)
    parser.add_argument("--early-stopping", choices=["true", "false", "never"], default="false")
    parser.add_argument("--num-return-sequences", type=int, default=1)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0)
    parser.add_argument("--repetition-penalty", type=finite_float, default=1.0)
    parser.add_argument("--min-new-tokens", type=int, default=0)
    parser.add_argument("--eos-token-id", default=None,
                        help="stop a row at this token id ('none': never stop early); default: the "
                             "checkpoint's config.json eos_token_id, if it names one")


def eos_token_id(args: argparse.Namespace, directory: Path, model: GPT) -> int | list[int] | None:
    """--eos-token-id (the decoders check it), or the checkpoint's own (config.json), checked here
    so that the error says where it came from."""
    if args.eos_token_id is not None:
        if args.eos_token_id.lower() == "none":
            return None
        try:
            return int(args.eos_token_id)
        except ValueError:
            raise ValueError(f"--eos-token-id must be a token id or 'none', got {args.eos_token_id!r}") from None
    eos = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("eos_token_id")
    try:
        DecodingOptions(eos_token_id=eos).rules(model.config.vocab_size)
    except ValueError:
        raise ValueError(f"--eos-token-id: the checkpoint's config names EOS {eos!r}, which is not a token of its "
                         f"vocabulary [0, {model.config.vocab_size}); pass --eos-token-id ID, or 'none'") from None
    return eos


def shared_options(args: argparse.Namespace, eos: int | list[int] | None) -> DecodingOptions:
    """The options every decoder shares, built (and checked) once."""
    return DecodingOptions(eos_token_id=eos, min_new_tokens=args.min_new_tokens,
                           no_repeat_ngram_size=args.no_repeat_ngram_size, repetition_penalty=args.repetition_penalty)


def early_stopping(value: str) -> bool | str:
    return {"true": True, "false": False, "never": "never"}[value]


def run_decoder(name: str, args: argparse.Namespace, model: GPT, ids: torch.Tensor, options: DecodingOptions, **extra):
    """The decoder the scripts call `name` (greedy, beam, diverse, sample, contrastive, speculative)
    with the options the arguments give; `extra` (on_token, say; speculative's draft) goes to the decoder too.
    The sampling options are checked whichever decoder runs: a value sampling would refuse is an
    error, not ignored."""
    check_sampling(args.temperature, args.top_k or 0, args.top_p, args.min_p, args.typical_p)
    common = dict(max_new_tokens=args.max_new_tokens, options=options, **{k: v for k, v in extra.items() if k != "draft"})
    beams = dict(num_beams=args.num_beams, length_penalty=args.length_penalty,
                 early_stopping=early_stopping(args.early_stopping), num_return_sequences=args.num_return_sequences)
    if name == "greedy":
        return decoders.greedy(model, ids, **common)
    if name == "beam":
        return decoders.beam_search(model, ids, **beams, **common)
    if name == "diverse":
        return decoders.diverse_beam_search(model, ids, num_beam_groups=args.num_beam_groups,
                                            diversity_penalty=args.diversity_penalty, **beams, **common)
    if name == "contrastive":
        return decoders.contrastive_search(model, ids, penalty_alpha=args.penalty_alpha,
                                           top_k=4 if args.top_k is None else args.top_k, **common)
    if name == "speculative":
        return decoders.speculative(model, extra["draft"], ids, draft_tokens=args.draft_tokens, **common)
    sampling = dict(temperature=args.temperature, top_k=args.top_k or 0, top_p=args.top_p, min_p=args.min_p,
                    typical_p=args.typical_p, num_return_sequences=args.num_return_sequences,
                    generator=torch.Generator(device=args.device).manual_seed(args.seed))
    return decoders.sample(model, ids, **(sampling | common))


DECODER_NAMES = ["greedy", "beam", "diverse", "sample", "contrastive", "speculative"]


# ---- the analysis scripts --------------------------------------------------------------------

# The opening of "A Tale of Two Cities" (Dickens, 1859; public domain): the default text to look at.
SAMPLE_TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had "
    "everything before us, we had nothing before us, we were all going direct to Heaven, we were all going "
    "direct the other way."
)


PICTURES_HINT = 'pictures need the views extra: .venv/bin/pip install -e ".[views]"'


def pictures():
    """minigpt.views (figures and interactive views), or None when its extra is not installed: the
    scripts then print their tables only, and say how to get the pictures."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # draw to files; no window, no display needed
        from minigpt import views
    except ImportError:
        return None
    return views


def save(picture, path: Path) -> Path:
    """A matplotlib figure or an interactive view, written to path; an unwritable path is a user error."""
    try:
        picture.savefig(path, dpi=120) if hasattr(picture, "savefig") else picture.save(path)
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", default="pictures", help="where the PNG files go (default: ./pictures, created if needed)")


def output_dir(args: argparse.Namespace) -> Path:
    return make_directory(Path(args.out_dir), "--out-dir")


def make_directory(path: Path, flag: str) -> Path:
    """mkdir -p, with a failure said to come from the option `flag`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{flag} {path}: {err.strerror or err}") from None
    return path


def draw_bar(label: str, done: int, total: int, after: str = "") -> None:
    """Redraw the progress line on stderr: `label 5/10 [##########..........] after`."""
    filled = round(20 * done / total)
    print(f"\r{label} {done}/{total} [{'#' * filled}{'.' * (20 - filled)}] {after}", end="", file=sys.stderr, flush=True)


def machine_line() -> str:
    """When and where a measurement ran, and how busy the machine was, printed above every figure a
    benchmark prints, so that a table pasted into the README says where it came from."""
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.exists() else []
    cpu = names[0].strip() if names else platform.processor() or platform.machine()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())  # other work on the machine slows every figure
    return (f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu}, {os.cpu_count()} cores, load "
            f"{load} (1, 5, 15 min) before the run; torch {torch.__version__}, {torch.get_num_threads()} threads")


def seconds(job: Callable[[], object]) -> float:
    """Wall-clock seconds one call of `job` takes."""
    start = time.perf_counter()
    job()
    return time.perf_counter() - start


def table(rows: list[list[str]], header: list[str]) -> str:
    """Rows of cells, right-aligned in columns under the header."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows])
