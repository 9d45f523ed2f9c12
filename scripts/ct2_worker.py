#!/usr/bin/env python
"""The benchmark's CTranslate2 worker (bench.py starts it): CTranslate2 runs in a process of its own,
because once loaded its thread pool slows every other engine in the process (measured: minigpt's
int8 greedy at batch 1 fell from 131 to 61 tokens/s beside an idle CTranslate2 Generator).

    python scripts/ct2_worker.py CHECKPOINT QUANTIZATION THREADS VOCAB_SIZE

Converts the checkpoint (the benchmark's own random one: tokenizer files are written into it) with
CTranslate2's transformers converter, then reads a case per line on
stdin ({"input_ids", "new_tokens", "beam_size"}) and writes the seconds its generate_batch took.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import ctranslate2
import transformers
from ctranslate2.converters import TransformersConverter

from minigpt import Tokenizer

transformers.logging.set_verbosity_error()  # the converter loads the checkpoint with transformers: keep it quiet
transformers.logging.disable_progress_bar()
checkpoint, quantization, threads, vocab_size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# The converter reads the tokenizer's vocabulary too and wants exactly the model's size: GPT-2's,
# cut to it for the small shapes, its last entry the end of text (ids stay ids; text does not matter here).
gpt2 = Tokenizer.gpt2().decoder
symbol = [gpt2[i] for i in range(vocab_size - 1)] + ["<|endoftext|>"]  # it takes token strings, not ids
(checkpoint / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbol)}))
(checkpoint / "merges.txt").write_text("#version: 0.2\n")
converted = Path(tempfile.mkdtemp(prefix="minigpt-ct2-")) / quantization
TransformersConverter(str(checkpoint)).convert(str(converted), quantization=quantization)
generator = ctranslate2.Generator(str(converted), device="cpu", intra_threads=threads, compute_type=quantization)
for line in sys.stdin:
    case = json.loads(line)
    batch = [[symbol[i] for i in row] for row in case["input_ids"]]
    started = time.perf_counter()
    generator.generate_batch(batch, max_length=case["new_tokens"], min_length=case["new_tokens"],
                             beam_size=case["beam_size"], include_prompt_in_result=False)
    print(time.perf_counter() - started, flush=True)
