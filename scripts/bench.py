#!/usr/bin/env python
"""Tokens per second of minigpt's decoders, of transformers' generate(), of CTranslate2 and of ONNX
Runtime, measured in the same run on the same random weights, with each one's ratio to
transformers (> 1: faster); then what bounds batch 1, and how often each format's greedy tokens
equal float32's.

    python scripts/bench.py                  # GPT-2 124M shape, CPU (or CUDA if present)
    python scripts/bench.py --device cuda --dtype float16

Columns: minigpt as loaded; minigpt.fast.optimize with float32, bfloat16 and int8 weights; on the
CPU also each of those with its batch-1 step compiled (compile_step); CTranslate2 float32 and
int8 (the same checkpoint through its transformers converter) and ONNX Runtime float32 and int8
(our GPT exported with a KV cache, int8 by ONNX Runtime's dynamic quantization): the `bench`
extra, `pip install -e ".[bench]"`. Each case runs once to warm up, then `--repeats` times, the
engines taking turns; the median counts.

What bounds batch 1: the bytes a step reads (every weight matrix, in its format), and how long
reading exactly those tensors takes, in a step's order: each is read from memory, not from a
cache, as in a real step (together they are many times the caches' size). The reading is
PyTorch's integer max over each tensor, taking turns with the steps; the reading time over a
step's time is its share. rows.cpp in a compiled step can stream a little faster than that
reduction: a share above 100% means the step runs at the machine's read bandwidth.

Agreement: greedy tokens at batch 1 from `--agreement-prompts` prompts, compared with minigpt's
float32 as loaded, on the random weights and on the model in the box (trained weights).

Speculative decoding: greedy at batch 1 with a draft guessing 4 tokens a round, against plain
greedy on the same model (both fast float32), taking turns: how many guesses the model accepted
and the tokens/s of each; on the model in the box with its shipped draft, and on the random
weights with a draft cut from them (their first 2 blocks).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import decoders
from common import (DTYPES, SHIPPED_DRAFT, Parser, add_threads_argument, machine_line, option, positive_int,
                    random_gpt2_checkpoint, run, seconds, table)
from minigpt import GPT, Tokenizer
from minigpt.checks import check_device
from minigpt.config import PRESETS
from minigpt.fast import WEIGHT_FORMATS, cache_path, compile_step, describe, optimize
from minigpt.fast.cpu import capabilities, cpu_name, vector_flags
from minigpt.fast.int8 import Int8Linear, Int8TokenEmbedding
from minigpt.fast.packed import PackedLinear, PackedTokenEmbedding
from minigpt.training.corpus import shakespeare
from weights import SHAKESPEARE, load_gpt2, load_tokenizer


PAUSE = 0.3  # seconds between two timed runs: longer than CTranslate2's OpenMP threads spin after a run (200 ms)


def timed(runs: list, device: str, repeats: int) -> list[float]:
    """Median seconds of each run. The runs take turns (a, b, c, a, b, c, ...) so that a change
    in the machine's load during the measurement falls on all of them alike."""

    def once(job) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        # A pause first: an engine's threads spin for a while after it returns (ONNX Runtime's do
        # by default, CTranslate2's for 200 ms), and would take the cores from the next one.
        # Measured on 2 AVX2 cores, taking turns: our float32 greedy 885 ms with a pause of 50 ms
        # after CTranslate2, 671 ms with 300 ms (CTranslate2 715 and 511, ONNX Runtime 748 and 534).
        time.sleep(PAUSE)
        start = time.perf_counter()
        measured = job()  # a job in another process reports its own time (no pipe overhead counted)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return measured if isinstance(measured, float) else time.perf_counter() - start

    for job in runs:  # warm-up: allocator, kernels, caches
        job()
    times = [[once(job) for job in runs] for _ in range(repeats)]
    return [statistics.median(column) for column in zip(*times)]


class Worker:
    """An engine in a process of its own, timing itself: a case per line to its stdin (JSON), back
    on its stdout {"seconds"} and, from the CTranslate2 and ONNX Runtime workers, {"tokens"} it
    chose. Used for transformers 4.55.4 (which needs its own import path), CTranslate2 and ONNX
    Runtime (whose thread pools slow any engine beside them in one process)."""

    def __init__(self, command: list[str], env: dict | None = None, beams: bool = False):
        self.beams = beams  # whether it runs beam search (our ONNX Runtime loop is greedy only)
        self.process = subprocess.Popen([sys.executable, *command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)

    def ask(self, case: dict) -> dict:
        self.process.stdin.write(json.dumps(case) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the benchmark worker {self.process.args[1]} stopped")
        return json.loads(answer)

    def job(self, case: dict):
        """A run for `timed`, which takes the seconds the worker reports (no pipe overhead counted)."""
        return lambda: float(self.ask(case)["seconds"])

    def greedy(self, ids: torch.Tensor, new_tokens: int) -> list[int]:
        """The tokens it chooses greedily after one prompt (1 t)."""
        return self.ask(peer_case(ids, new_tokens))["tokens"][0]


def legacy_worker(directory: Path, threads: int) -> Worker:
    """transformers 4.55.4's generate() (tests/reference_455.py --serve)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from legacy import RUNNER, ensure_installed, environment

    ensure_installed()
    return Worker([str(RUNNER), "--serve", str(directory), str(threads)], env=environment())


def legacy_case(ids: torch.Tensor, new_tokens: int, **kwargs) -> dict:
    """Exactly new_tokens tokens (random weights must not stop early)."""
    kwargs |= {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "pad_token_id": 0}
    return {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "kwargs": kwargs}


def write_ct2_tokenizer(directory: Path, vocab_size: int) -> None:
    """The tokenizer files CTranslate2's converter reads beside the weights, once, before its workers
    start. It wants exactly the model's vocabulary size: GPT-2's, cut to it for the small shapes,
    its last entry the end of text (ids stay ids; the text does not matter here)."""
    gpt2 = Tokenizer.gpt2().decoder
    symbols = [gpt2[i] for i in range(vocab_size - 1)] + ["<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")


def peer_workers(directory: Path, vocab_size: int, threads: int) -> dict[str, Worker]:
    """CTranslate2's Generator and ONNX Runtime on the checkpoint, float32 and int8 each, where
    installed (scripts/ct2_worker.py, ort_worker.py). CTranslate2's converter reads tokenizer files
    beside the weights: written into a copy, so a checkpoint's own are never touched."""
    engines = {}
    if importlib.util.find_spec("ctranslate2") is not None:
        copy = Path(tempfile.mkdtemp(prefix="minigpt-ct2-checkpoint-"))
        atexit.register(shutil.rmtree, copy, ignore_errors=True)
        for name in ("config.json", "model.safetensors"):
            (copy / name).symlink_to((directory / name).resolve())
        write_ct2_tokenizer(copy, vocab_size)
        engines |= {f"CT2 {q}": Worker([str(Path(__file__).with_name("ct2_worker.py")), str(copy), q, str(threads)],
                                       beams=True) for q in ("float32", "int8")}
    if importlib.util.find_spec("onnxruntime") is not None:
        engines |= {f"ORT {q}": Worker([str(Path(__file__).with_name("ort_worker.py")), str(directory), q, str(threads)])
                    for q in ("float32", "int8")}
    return engines


def peer_case(ids: torch.Tensor, new_tokens: int, beam_size: int = 1) -> dict:
    return {"input_ids": ids.tolist(), "new_tokens": new_tokens, "beam_size": beam_size}


def step_tensors(model) -> list[torch.Tensor]:
    """The weights a batch-1 decoding step of an optimized model reads, in a step's order: each
    block's matrices as rows.cpp reads them (float32, bfloat16, or int8 blocks and their scales),
    then the head. The embedding lookup reads a few rows, LayerNorms and biases are small."""
    linears = [m for m in model.blocks.modules() if isinstance(m, (PackedLinear, Int8Linear))]
    head = model.wte
    if isinstance(head, PackedTokenEmbedding):
        return [m.weight for m in linears] + [head.head]
    if isinstance(head, Int8TokenEmbedding):
        return [t for m in linears for t in (m.q, m.scales)] + [head.q, head.scales]
    raise ValueError(f"not an optimized CPU model: its head is {type(head).__name__}")


def reader(tensors: list[torch.Tensor]):
    """A job that reads every byte of these tensors once, in order (an integer max over each: no
    arithmetic to wait for, and no float values that could be slow to add)."""
    words = [t.reshape(-1).view(torch.int32 if t.nbytes % 4 == 0 else torch.uint8) for t in tensors]  # any dtype's bytes
    return lambda: [w.max() for w in words]


def parser() -> Parser:
    parser = Parser(__doc__)
    parser.add_argument("--preset", choices=PRESETS, default="gpt2", help="model shape")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="of transformers and minigpt as loaded")
    parser.add_argument("--new-tokens", type=positive_int, default=32)
    parser.add_argument("--prompt-tokens", type=positive_int, default=32)
    parser.add_argument("--prefill-tokens", type=positive_int, default=512)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--agreement-prompts", type=positive_int, default=20,
                        help="prompts over which each format's greedy tokens are compared with float32's")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled-step columns (each "
                        "compiles for about 20 s)")
    add_threads_argument(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    option(check_device, "--device", args.device)
    context = PRESETS[args.preset].n_positions
    if args.prompt_tokens + args.new_tokens > context or args.prefill_tokens > context:
        raise ValueError(f"--prompt-tokens + --new-tokens and --prefill-tokens must fit the {args.preset} context "
                         f"of {context} positions")
    warnings.filterwarnings("ignore")
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()

    directory = random_gpt2_checkpoint(args.preset)
    dtype, cpu, threads = DTYPES[args.dtype], args.device == "cpu", torch.get_num_threads()
    ours = load_gpt2(directory, device=args.device, dtype=dtype)
    fast = {f"fast {w}": optimize(load_gpt2(directory, device=args.device), weights=w) for w in WEIGHT_FORMATS}
    models = {"minigpt": ours} | fast
    if cpu and not args.no_compile:
        models |= {f"compiled {w}": compile_step(optimize(load_gpt2(directory), weights=w)) for w in WEIGHT_FORMATS}
    engines = peer_workers(directory, ours.config.vocab_size, threads) if cpu else {}
    if cpu and len(engines) < 4:
        print('note: CTranslate2 or ONNX Runtime columns left out; pip install -e ".[bench]" to add them')
    theirs = GPT2LMHeadModel.from_pretrained(directory, dtype=dtype).to(args.device).eval()
    theirs.generation_config.eos_token_id = None  # random weights: never stop early, in any engine
    theirs.generation_config.pad_token_id = 0
    config, n = ours.config, args.new_tokens
    g = torch.Generator().manual_seed(0)

    def prompt(batch: int) -> torch.Tensor:
        return torch.randint(0, config.vocab_size, (batch, args.prompt_tokens), generator=g).to(args.device)

    def hf(ids, **kw):
        return lambda: theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, **kw)

    one, eight = prompt(1), prompt(8)
    legacy = legacy_worker(directory, threads) if cpu and dtype == torch.float32 else None
    long = torch.randint(0, config.vocab_size, (1, args.prefill_tokens), generator=g).to(args.device)
    seeded = torch.Generator(device=args.device)
    cases = [  # name, generated tokens per run, how we run it on a model, transformers, a peer (or None)
        ("greedy, batch 1", n, lambda m: decoders.greedy(m, one, max_new_tokens=n), hf(one, do_sample=False),
         lambda e: e.job(peer_case(one, n))),
        ("greedy, batch 8", 8 * n, lambda m: decoders.greedy(m, eight, max_new_tokens=n), hf(eight, do_sample=False),
         lambda e: e.job(peer_case(eight, n))),
        ("beam search, 4 beams", n, lambda m: decoders.beam_search(m, one, num_beams=4, max_new_tokens=n),
         hf(one, do_sample=False, num_beams=4), lambda e: e.job(peer_case(one, n, beam_size=4)) if e.beams else None),
        ("sampling, batch 1", n, lambda m: decoders.sample(m, one, max_new_tokens=n, generator=seeded.manual_seed(0)),
         hf(one, do_sample=True, top_k=0), None),
        (f"prefill, {args.prefill_tokens} tokens", args.prefill_tokens, lambda m: m(long),
         lambda: theirs(long, use_cache=False), None),
    ]
    if legacy is not None:  # transformers 5.x no longer has these two: the reference is 4.55.4
        cases += [
            ("contrastive (a .6, k 4) *", n,
             lambda m: decoders.contrastive_search(m, one, penalty_alpha=0.6, top_k=4, max_new_tokens=n),
             legacy.job(legacy_case(one, n, penalty_alpha=0.6, top_k=4)), None),
            ("diverse beam (4, 2 groups) *", n,
             lambda m: decoders.diverse_beam_search(m, one, num_beams=4, num_beam_groups=2, diversity_penalty=1.0,
                                                    max_new_tokens=n),
             legacy.job(legacy_case(one, n, num_beams=4, num_beam_groups=2, diversity_penalty=1.0, do_sample=False)),
             None),
        ]

    # every worker has loaded (and converted, quantized) its model before anything is timed: a
    # worker still starting took one core from the first cases (our batch 1 measured at a quarter)
    for worker, case in [(e, peer_case(one, 1)) for e in engines.values()] + ([(legacy, legacy_case(one, 1))] if legacy else []):
        worker.ask(case)
    print(machine_line())
    if cpu:
        print(where(), flush=True)
    print(f"{args.preset} shape ({config.n_layer} layers, {config.n_embd} wide), random weights; {args.device}, {args.dtype}, "
          f"{threads} threads; prompt {args.prompt_tokens} tokens, {n} new tokens; median of {args.repeats}; "
          "tokens per second (ratio to transformers)")
    columns = ["transformers", *models, *engines]
    width = max(16, *(len(name) + 2 for name in columns))
    print(f"{'case':<30}" + "".join(f"{name:>{width}}" for name in columns))
    for name, tokens, ours_on, reference, peer_on in cases:
        runs = [reference] + [functools.partial(ours_on, m) for m in models.values()]
        peers = [peer_on(e) if peer_on else None for e in engines.values()]
        with torch.no_grad():
            t_ref, *t_rest = timed(runs + [p for p in peers if p], args.device, args.repeats)
        cells = [f"{tokens / t_ref:.1f}"] + [f"{tokens / t:.1f} ({t_ref / t:.2f})" for t in t_rest[:len(models)]]
        measured = iter(t_rest[len(models):])
        cells += [f"{tokens / (t := next(measured)):.1f} ({t_ref / t:.2f})" if p else "-" for p in peers]
        print(f"{name:<30}" + "".join(f"{cell:>{width}}" for cell in cells))
    if legacy is not None:
        print("* against transformers 4.55.4 (in a process of its own), the last release with these decoders")

    if cpu:
        print(f"\nKernels chosen by timing on this machine (cached in {cache_path()}):")
        for weights in WEIGHT_FORMATS:
            print("\n".join(f"  {weights}: {line}" for line in describe(fast[f"fast {weights}"])))
        bound(models, args.prompt_tokens + n, args.repeats)
        # the compiled steps are left out: they choose their eager models' tokens (tests/test_fast.py)
        agreement({"minigpt": ours} | fast, engines, directory, config.vocab_size, n, args.agreement_prompts, threads)
    speculation(directory, args.device, n, args.repeats)
    cache = ours.new_cache(1, args.prompt_tokens + n)
    per_token = cache.nbytes / cache.max_length
    print(f"\nKV cache: {cache.nbytes / 2**20:.1f} MiB for 1 row x {cache.max_length} positions "
          f"({per_token / 1024:.1f} KiB per position: {config.n_layer} layers x keys and values x {config.n_embd} x "
          f"{ours.dtype.itemsize} bytes); preallocated once, written in place")
    return 0


def where() -> str:
    """The CPU's model, the vector instructions the kernels can use, its caches and a bandwidth
    figure: an integer max over 1 GiB, several times the caches, best of 3 (as the bound table
    reads the weights: a float sum waits on its additions and reads slower than memory allows)."""
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        caches.append(f"L{level}{'d' if kind == 'Data' else 'i' if kind == 'Instruction' else ''} {size}")
    words = torch.ones(2**28, dtype=torch.int32)  # 1 GiB
    best = min(seconds(words.max) for _ in range(3))
    restricted = [f"{name}={os.environ[name]}" for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if name in os.environ]
    return (f"CPU {cpu_name()}; vector instructions: {' '.join(vector_flags()) or 'none found'}; caches (per core, "
            f"L3 shared): {', '.join(caches) or 'unknown'}; memory read {words.nbytes / best / 1e9:.1f} GB/s "
            f"(an integer max over 1 GiB, best of 3)\nPyTorch's kernels {torch.backends.cpu.get_cpu_capability()}; "
            f"minigpt: {capabilities()}" + (f"; instruction set restricted by {' '.join(restricted)}" if restricted else ""))


def bound(models: dict, length: int, repeats: int) -> None:
    """Bytes per token, the time to read them (from memory, in a step's order), and each step's
    time against it: the reads and the steps take turns, so a change in the machine's speed
    falls on both."""
    tokens = torch.tensor([0])

    def decode(model):  # `length` steps from an empty cache
        def run():
            cache = model.new_cache(1, length)
            for _ in range(length):
                model.next_logits(tokens, cache)
        return run

    jobs, nbytes = {}, {}  # name -> (job, how many tokens' worth it does)
    for weights in WEIGHT_FORMATS:
        tensors = step_tensors(models[f"fast {weights}"])
        nbytes[weights] = sum(t.nbytes for t in tensors)
        jobs[f"read {weights}"] = (reader(tensors), 1)
        jobs |= {f"{kind} {weights}": (decode(models[f"{kind} {weights}"]), length) for kind in ("fast", "compiled")
                 if f"{kind} {weights}" in models}
    with torch.no_grad():
        seconds_each = timed([job for job, _ in jobs.values()], "cpu", repeats)
    per_token = {name: t / count for (name, (_, count)), t in zip(jobs.items(), seconds_each)}
    print("\nWhat bounds batch 1: a step reads every weight matrix once. Reading exactly those bytes, in a step's "
          "order (from memory, not a cache), takes:")
    rows = []
    for weights in WEIGHT_FORMATS:
        reading = per_token[f"read {weights}"]
        row = [weights, f"{nbytes[weights] / 1e6:.1f}", f"{reading * 1e3:.2f}", f"{nbytes[weights] / reading / 1e9:.1f}",
               f"{1 / reading:.1f}"]
        for kind in ("fast", "compiled"):
            if f"{kind} {weights}" in per_token:
                t = per_token[f"{kind} {weights}"]
                row += [f"{t * 1e3:.2f}", f"{reading / t:.0%}"]
        rows.append(row)
    header = ["weights", "MB per token", "read (ms)", "GB/s", "bound tok/s", "step (ms)", "share"]
    header += ["compiled step", "share"] if len(rows[0]) > len(header) else []
    print(table(rows, header))


def agreement(models: dict, engines: dict, directory: Path, vocab_size: int, new_tokens: int, count: int,
              threads: int) -> None:
    """How many of each engine's greedy tokens equal float32 minigpt's, on these random weights
    and on the model in the box, over `count` prompts of 16 tokens."""
    g = torch.Generator().manual_seed(1)
    random_prompts = [torch.randint(0, vocab_size, (1, 16), generator=g) for _ in range(count)]
    text = load_tokenizer(SHAKESPEARE).encode(shakespeare()["a-midsummer-night-s-dream"])
    starts = torch.randint(0, len(text) - 16, (count,), generator=g).tolist()
    shipped_prompts = [torch.tensor([text[s:s + 16]]) for s in starts]
    shipped = {"minigpt": load_gpt2(SHAKESPEARE)} | {f"fast {w}": optimize(load_gpt2(SHAKESPEARE), weights=w)
                                                     for w in WEIGHT_FORMATS}
    shipped_engines = peer_workers(SHAKESPEARE, shipped["minigpt"].config.vocab_size, threads)
    print(f"\nAgreement with float32 (minigpt as loaded): greedy at batch 1, {count} prompts of 16 tokens, "
          f"{new_tokens} new tokens each: tokens equal before the first difference (mean), and prompts with all equal")
    columns = []
    for weights_name, chosen_models, chosen_engines, prompts in (
            ("random weights", models, engines, random_prompts), ("the model in the box", shipped, shipped_engines,
                                                                   shipped_prompts)):
        chosen = {}
        with torch.no_grad():
            for name, model in chosen_models.items():
                chosen[name] = [decoders.greedy(model, p, max_new_tokens=new_tokens).new_tokens[0].tolist() for p in prompts]
        for name, engine in chosen_engines.items():
            chosen[name] = [engine.greedy(p, new_tokens) for p in prompts]
        reference = chosen.pop("minigpt")
        columns.append((weights_name, {name: same_prefix(tokens, reference) for name, tokens in chosen.items()}))
    names = list(columns[0][1])
    rows = [[name] + [f"{sum(c[name]) / count:.1f} ({sum(x == new_tokens for x in c[name])}/{count})"
                      if name in c else "-" for _, c in columns] for name in names]
    print(table(rows, ["engine", *(w for w, _ in columns)]))


def speculation(directory: Path, device: str, new_tokens: int, repeats: int, guesses: int = 4) -> None:
    """Speculative decoding (greedy, batch 1, `guesses` a round) against plain greedy on the same
    model, taking turns: on the model in the box with its shipped draft, Shakespeare prompts; and on
    the random-weight model with a 2-layer draft cut from it (its embeddings, first 2 blocks and
    head): unrelated random weights would agree on almost nothing, this draft agrees as far as 2
    blocks already decide the model's argmax. Both models fast float32 (`optimize`)."""
    g = torch.Generator().manual_seed(2)
    text = load_tokenizer(SHAKESPEARE).encode(shakespeare()["the-tempest"])
    start = int(torch.randint(0, len(text) - 16, (1,), generator=g))
    full = load_gpt2(directory)
    cut = dataclasses.replace(full.config, n_layer=2)
    draft = GPT(cut).eval()
    draft.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("blocks.")
                           or int(k.split(".")[1]) < 2})
    pairs = {"the model in the box + its draft": (load_gpt2(SHAKESPEARE), load_gpt2(SHIPPED_DRAFT),
                                                  torch.tensor([text[start:start + 16]])),
             "random gpt2 shape + its first 2 blocks": (full, draft,
                                                        torch.randint(0, full.config.vocab_size, (1, 16), generator=g))}
    print(f"\nSpeculative decoding: greedy at batch 1, {new_tokens} new tokens, {guesses} guesses a round, both "
          "models fast float32; tokens/s against plain greedy on the same model, median of turns")
    rows = []
    for name, (model, small, ids) in pairs.items():
        model, small, ids = optimize(model.to(device)), optimize(small.to(device)), ids.to(device)
        out = decoders.speculative(model, small, ids, max_new_tokens=new_tokens, draft_tokens=guesses)
        assert torch.equal(out.sequences, decoders.greedy(model, ids, max_new_tokens=new_tokens).sequences)
        with torch.no_grad():
            plain, drafted = timed([lambda: decoders.greedy(model, ids, max_new_tokens=new_tokens),
                                    lambda: decoders.speculative(model, small, ids, max_new_tokens=new_tokens,
                                                                 draft_tokens=guesses)], device, repeats)
        accepted, proposed = int(out.accepted.sum()), int(out.proposed.sum())
        rows.append([name, f"{model.config.parameter_count / 1e6:.1f}M / {small.config.parameter_count / 1e6:.1f}M",
                     f"{accepted}/{proposed} ({accepted / max(proposed, 1):.0%})", f"{new_tokens / plain:.1f}",
                     f"{new_tokens / drafted:.1f} ({plain / drafted:.2f}x)"])
    print(table(rows, ["model + draft", "parameters", "guesses accepted", "greedy tok/s", "speculative tok/s"]))


def same_prefix(tokens: list[list[int]], reference: list[list[int]]) -> list[int]:
    """For each prompt: how many tokens equal the reference's before the first that differs."""
    def prefix(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return [prefix(a, b) for a, b in zip(tokens, reference)]


if __name__ == "__main__":
    sys.exit(run(main, parser()))
