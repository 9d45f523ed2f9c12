#!/usr/bin/env python
"""The benchmark's ONNX Runtime worker (bench.py starts it, like the CTranslate2 one): our GPT
exported to ONNX with a KV cache, run by ONNX Runtime in a process of its own.

    python scripts/ort_worker.py CHECKPOINT QUANTIZATION THREADS

QUANTIZATION: float32, or int8 (ONNX Runtime's own dynamic quantization of the exported graph:
int8 weights, one scale per output channel, and uint8 activations quantized on the fly).

ONNX has no state a step could write in place, so the exported step takes the past keys and
values as one input (l 2 b h p d) and returns them grown by the new positions (l 2 b h p+t d);
the model computing it is our own GPT, handed a cache that concatenates (`GrowingCache`). Then,
like ct2_worker.py, it reads a case per line on stdin ({"input_ids", "new_tokens"}) and writes
{"seconds", "tokens"}: how long its greedy loop took, and the tokens it chose.
"""

import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from weights import load_gpt2  # noqa: E402


class GrowingCache:
    """What GPT.transform asks of a cache (append, writer) for a step whose past is an input:
    every past slot is a real token, and each layer's keys and values grow by concatenation."""

    def __init__(self, past: Tensor):
        self.past = past  # (l 2 b h p d)
        self.present: list[Tensor] = []  # per layer (2 b h p+t d)

    def append(self, new_real: Tensor) -> tuple[Tensor, Tensor]:
        batch, p = new_real.shape[0], self.past.shape[-2]
        real = torch.cat([new_real.new_ones(batch, p), new_real], dim=1)  # (b p+t)
        return real, torch.arange(new_real.shape[1]) + p  # the new positions' slots (t)

    def writer(self, layer: int, slots: Tensor):
        def write(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            keys = torch.cat([self.past[layer, 0], k], dim=2)  # (b h p+t d)
            values = torch.cat([self.past[layer, 1], v], dim=2)
            self.present.append(torch.stack([keys, values]))
            return keys, values
        return write


class Step(nn.Module):
    """input_ids (b t), past (l 2 b h p d) -> the last position's logits (b v), present (l 2 b h p+t d)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, past: Tensor) -> tuple[Tensor, Tensor]:
        cache = GrowingCache(past)
        hidden = self.model.transform(input_ids, torch.ones_like(input_ids, dtype=torch.bool), cache)
        return self.model.head(hidden[:, -1]), torch.stack(cache.present)


def export(checkpoint: Path, quantization: str, directory: Path) -> Path:
    model = load_gpt2(checkpoint).eval()
    config = model.config
    step = directory / "step.onnx"
    past = torch.zeros(config.n_layer, 2, 1, config.n_head, 3, config.head_dim)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(Step(model), (torch.zeros(1, 2, dtype=torch.long), past), str(step), dynamo=False,
                          input_names=["input_ids", "past"], output_names=["logits", "present"],
                          dynamic_axes={"input_ids": {0: "b", 1: "t"}, "past": {2: "b", 4: "p"},
                                        "present": {2: "b", 4: "s"}, "logits": {0: "b"}})
    if quantization == "float32":
        return step
    quantized = directory / "step-int8.onnx"
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice to pre-process the graph, on the root logger
    quantize_dynamic(str(step), str(quantized), weight_type=QuantType.QInt8, per_channel=True)
    return quantized


def main() -> None:
    checkpoint, quantization, threads = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    with tempfile.TemporaryDirectory(prefix="minigpt-ort-") as directory:  # the session reads the file whole, once
        session = onnxruntime.InferenceSession(str(export(checkpoint, quantization, Path(directory))), options,
                                               providers=["CPUExecutionProvider"])
    config = json.loads((checkpoint / "config.json").read_text())
    n_layer, n_head = config["n_layer"], config["n_head"]
    head_dim = config["n_embd"] // n_head
    for line in sys.stdin:
        case = json.loads(line)
        ids = np.array(case["input_ids"], dtype=np.int64)
        started = time.perf_counter()
        past = np.zeros((n_layer, 2, len(ids), n_head, 0, head_dim), dtype=np.float32)
        chosen = []
        for _ in range(case["new_tokens"]):
            logits, past = session.run(None, {"input_ids": ids, "past": past})
            ids = logits.argmax(-1)[:, None]  # greedy: (b 1)
            chosen.append(ids)
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "tokens": np.concatenate(chosen, axis=1).tolist()}), flush=True)


if __name__ == "__main__":
    main()
