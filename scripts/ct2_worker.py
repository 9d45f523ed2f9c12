#!/usr/bin/env python
"""The benchmark's CTranslate2 worker (bench.py starts it): CTranslate2 runs in a process of its own,
because once loaded its thread pool slows every other engine in the process (measured: minigpt's
int8 greedy at batch 1 fell from 131 to 61 tokens/s beside an idle CTranslate2 Generator).

    python scripts/ct2_worker.py CHECKPOINT QUANTIZATION THREADS

Converts the checkpoint with CTranslate2's transformers converter (bench.py has written the
tokenizer files it also reads), then reads a case per line on stdin ({"input_ids", "new_tokens",
"beam_size"}) and writes {"seconds", "tokens"}: how long its generate_batch took, and the tokens
it chose (one list per row).
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import ctranslate2
import transformers
from ctranslate2.converters import TransformersConverter

transformers.logging.set_verbosity_error()  # the converter loads the checkpoint with transformers: keep it quiet
transformers.logging.disable_progress_bar()
checkpoint, quantization, threads = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
vocab = json.loads((checkpoint / "vocab.json").read_text())
symbol = sorted(vocab, key=vocab.get)  # id -> token string: the Generator takes strings, not ids
with tempfile.TemporaryDirectory(prefix="minigpt-ct2-") as converted:  # the Generator reads it whole, once
    TransformersConverter(str(checkpoint)).convert(converted, quantization=quantization, force=True)
    generator = ctranslate2.Generator(converted, device="cpu", intra_threads=threads, compute_type=quantization)
for line in sys.stdin:
    case = json.loads(line)
    batch = [[symbol[i] for i in row] for row in case["input_ids"]]
    started = time.perf_counter()
    results = generator.generate_batch(batch, max_length=case["new_tokens"], min_length=case["new_tokens"],
                                       beam_size=case["beam_size"], include_prompt_in_result=False)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "tokens": [result.sequences_ids[0] for result in results]}), flush=True)
