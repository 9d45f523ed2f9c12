"""The one-token decoding step, compiled: `compile_step(model)`.

`GPT.next_logits(tokens, cache)` has static shapes (the cache is preallocated and attention spans
all its slots) and reads nothing back to the host (the slot to write is a tensor in the cache), so
`torch.compile(..., fullgraph=True)` turns it into one graph with no break. On CUDA,
mode="reduce-overhead" also captures that graph as a CUDA graph: a step is then one launch,
not hundreds, which is what makes batch-1 decoding fast on a GPU (gpt-fast's recipe).

The compiled step replaces the model's `next_logits` on this one model object (an attribute that
shadows the method), so every decoder uses it without knowing; `del model.next_logits` undoes it.
"""

from __future__ import annotations

import torch

from ..checks import check_choice
from ..kv_cache import KVCache
from ..model import GPT


MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def compile_step(model: GPT, mode: str = "default") -> GPT:
    """Compile model.next_logits as one graph (`mode` as torch.compile takes it). Returns the model."""
    if not isinstance(model, GPT):
        raise ValueError(f"compile_step compiles a minigpt GPT's step, got {type(model).__name__}")
    check_choice("mode", mode, MODES)
    if "next_logits" in vars(model):
        raise ValueError("the model's step is already compiled; compile_step a freshly loaded model, or "
                         "`del model.next_logits` to undo the first")
    compiled = torch.compile(model.next_logits, fullgraph=True, mode=mode)

    def next_logits(tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        if cache.keys.is_cuda:
            # A CUDA graph replays fixed addresses: tell it these tensors are written in place and
            # stay where they are for the whole generation (beam search reorders them in place too).
            for tensor in (cache.keys, cache.values, cache.real, cache.end):
                torch._dynamo.mark_static_address(tensor)
            # and the graph's output buffer is reused by the next replay: hand out a copy
            return compiled(tokens, cache).clone()
        # freezing: the weights become constants of the graph, which oneDNN-packed weights must be
        # (it is read when a graph is compiled, the first call and each new shape, so it is set here)
        with torch._inductor.config.patch(freezing=True):
            return compiled(tokens, cache)

    model.next_logits = next_logits
    return model
