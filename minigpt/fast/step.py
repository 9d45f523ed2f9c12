"""The one-token decoding step, compiled: `compile_step(model)`.

`GPT.next_logits(tokens, cache)` has static shapes (the cache is preallocated and attention spans
all its slots) and reads nothing back to the host (the slot to write is a tensor in the cache), so
`torch.compile(..., fullgraph=True)` turns it into one graph with no break. On CUDA,
mode="reduce-overhead" also captures that graph as a CUDA graph: a step is then one launch,
not hundreds, which is what makes batch-1 decoding fast on a GPU (gpt-fast's recipe).

On the CPU what a compiled step saves is the time around the matrix products: the eager step's
few hundred small operations and their Python. Two settings matter there (docs/fast.md has the
figures): the graph's wrapper in C++ (`cpp_wrapper`), not Python; and guards on tensors only
(before each call torch.compile checks that what the graph was traced from still holds, and over
every module attribute that is slow). So the step is traced once, as the model is when
`compile_step` is first called: a hook set or a weight changed afterwards is not seen (compile a
freshly loaded model after setting them). The compiled graph serves a step of one row (batch 1):
more rows, where the matrix products dominate, run the eager step, and so does batch 1 where the
eager step is fused (fused.py: its products are already one C++ call). The KV cache keeps one
tensor per layer so that the graph writes it in place (kv_cache.py).

`compile_step` returns a `FastGPT` (fast_gpt.py) whose step is a `CompiledStep`; the model
itself is not changed, and `compiled.step.eager` is the step it falls back to.
"""

from __future__ import annotations

import types
from typing import Callable

import torch

from ..checks import check_choice
from ..kv_cache import KVCache
from ..model import GPT
from .fast_gpt import FastGPT
from .fused import FusedStep

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def compile_step(model: GPT | FastGPT, mode: str = "default") -> FastGPT:
    """The model (a GPT, or what `optimize` returned) with its one-token step compiled as one
    graph (`mode` as torch.compile takes it)."""
    if not isinstance(model, (GPT, FastGPT)):
        raise ValueError(f"compile_step compiles a minigpt GPT's step, got {type(model).__name__}")
    check_choice("mode", mode, MODES)
    fast = model if isinstance(model, FastGPT) else FastGPT(model)
    if isinstance(fast.step, CompiledStep):
        raise ValueError("the model's step is already compiled; compile_step a freshly loaded model, "
                         "or the model `.model` it wraps")
    return FastGPT(fast.model, CompiledStep(fast.model, mode, eager=fast.step))


class CompiledStep:
    """GPT.next_logits compiled (module docstring); `eager` serves the steps the graph does not."""

    def __init__(self, model: GPT, mode: str, eager: Callable):
        self.eager = eager  # the model's own step, or a fused one (fused.py)
        module_step = types.MethodType(GPT.next_logits, model)  # what is compiled: the modules' step, never a fused one
        if model.device.type == "cpu" and mode == "default":  # torch.compile takes a mode or options, not both
            self.compiled = torch.compile(own_code(module_step), fullgraph=True,
                                          options={"guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe})
        else:
            self.compiled = torch.compile(module_step, fullgraph=True, mode=mode)
        self.fused = eager.fused if isinstance(eager, FusedStep) else lambda rows, cache: False

    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        if cache.device.type == "cuda":
            # A CUDA graph replays fixed addresses: tell it these tensors are written in place and
            # stay where they are for the whole generation (beam search reorders them in place too).
            for tensor in (*cache.keys, *cache.values, cache.real, cache.end):
                torch._dynamo.mark_static_address(tensor)
            # and the graph's output buffer is reused by the next replay: hand out a copy
            return self.compiled(tokens, cache).clone()
        if tokens.shape[0] > 1 or self.fused(1, cache):
            return self.eager(tokens, cache)
        # freezing: the weights become constants of the graph, which oneDNN-packed weights must be
        # (it is read when a graph is compiled, the first call and each new shape, so it is set here)
        with torch._inductor.config.patch(freezing=True, cpp_wrapper=True):
            return self.compiled(tokens, cache)

    def __repr__(self) -> str:
        eager = getattr(self.eager, "__self__", None)
        return f"compiled at batch 1 where not fused; else {'module by module' if isinstance(eager, GPT) else repr(self.eager)}"


def own_code(method: Callable) -> Callable:
    """The bound method with a code object of its own. torch.compile keeps its graphs per code
    object and tells them apart by their guards; with guards on tensors only, two models calling
    GPT.next_logits would share one graph, the first model's weights frozen in it."""
    function = method.__func__
    copy = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    return types.MethodType(copy, method.__self__)
