"""The one-token decoding step, compiled: `compile_step(model)`.

`GPT.next_logits(tokens, cache)` has static shapes (the cache is preallocated and attention spans
all its slots) and reads nothing back to the host (the slot to write is a tensor in the cache), so
`torch.compile(..., fullgraph=True)` turns it into one graph with no break. On CUDA,
mode="reduce-overhead" also captures that graph as a CUDA graph: a step is then one launch,
not hundreds, which is what makes batch-1 decoding fast on a GPU (gpt-fast's recipe).

On the CPU what a compiled step saves is the time around the matrix products: the eager step's
few hundred small operations and their Python. Two settings matter there (measured on 2 EPYC
cores, int8 weights, batch 1, in one run: eager 6.8 ms a step, compiled as below 5.0 ms; with
PyTorch's defaults the compiled step was no faster than the eager one):
- the graph's wrapper in C++ (`cpp_wrapper`), not Python;
- guards on tensors only: before each call torch.compile checks that what the graph was traced
  from still holds, and over every module attribute that took 0.7 ms a step. So the step is traced
  once, as the model is when `compile_step` is first called: a hook set or a weight changed
  afterwards is not seen (compile a freshly loaded model after setting them).
The compiled graph serves a step of one row (batch 1): more rows, where the matrix products
dominate, run the eager step (compiled, they measured slower at batch 8), and so does batch 1
where the eager step is fused (fused.py: its products are already one C++ call with no Python
between them; on 2 EPYC cores, int8, the fused step took 4.5 ms, the module step compiled 4.9,
and the fused step compiled 5.0). The KV cache keeps one tensor per layer so that the graph
writes it in place (kv_cache.py): with the layers as slices of one tensor, a compiled step
copied the whole cache and took 68.9 ms at 1024 slots against the eager 9.2; now 5.9 against
8.4 (4.4 against 6.0 at 64 slots).

The compiled step replaces the model's `next_logits` on this one model object (an attribute that
shadows the method), so every decoder uses it without knowing; `model.next_logits =
model.next_logits.eager` undoes it.
"""

from __future__ import annotations

import types
from typing import Callable

import torch

from ..checks import check_choice
from ..kv_cache import KVCache
from ..model import GPT
from .fused import FusedStep


MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def compile_step(model: GPT, mode: str = "default") -> GPT:
    """Compile model.next_logits as one graph (`mode` as torch.compile takes it). Returns the model."""
    if not isinstance(model, GPT):
        raise ValueError(f"compile_step compiles a minigpt GPT's step, got {type(model).__name__}")
    check_choice("mode", mode, MODES)
    eager = model.next_logits  # the method, or a fused step (fused.py)
    if getattr(eager, "compiled", False):
        raise ValueError("the model's step is already compiled; compile_step a freshly loaded model, or "
                         "`model.next_logits = model.next_logits.eager` to undo the first")
    module_step = types.MethodType(GPT.next_logits, model)  # what is compiled: the modules' step, never a fused one
    if model.device.type == "cpu" and mode == "default":  # torch.compile takes a mode or options, not both
        compiled = torch.compile(own_code(module_step), fullgraph=True,
                                 options={"guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe})
    else:
        compiled = torch.compile(module_step, fullgraph=True, mode=mode)
    fused = eager.fused if isinstance(eager, FusedStep) else lambda rows, cache: False

    def next_logits(tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        if cache.device.type == "cuda":
            # A CUDA graph replays fixed addresses: tell it these tensors are written in place and
            # stay where they are for the whole generation (beam search reorders them in place too).
            for tensor in (*cache.keys, *cache.values, cache.real, cache.end):
                torch._dynamo.mark_static_address(tensor)
            # and the graph's output buffer is reused by the next replay: hand out a copy
            return compiled(tokens, cache).clone()
        if tokens.shape[0] > 1 or fused(1, cache):
            return eager(tokens, cache)
        # freezing: the weights become constants of the graph, which oneDNN-packed weights must be
        # (it is read when a graph is compiled, the first call and each new shape, so it is set here)
        with torch._inductor.config.patch(freezing=True, cpp_wrapper=True):
            return compiled(tokens, cache)

    next_logits.compiled, next_logits.eager = True, eager
    model.next_logits = next_logits
    return model


def own_code(method: Callable) -> Callable:
    """The bound method with a code object of its own. torch.compile keeps its graphs per code
    object and tells them apart by their guards; with guards on tensors only, two models calling
    GPT.next_logits would share one graph, the first model's weights frozen in it."""
    function = method.__func__
    copy = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    return types.MethodType(copy, method.__self__)
