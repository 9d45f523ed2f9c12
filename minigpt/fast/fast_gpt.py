"""What `optimize` and `compile_step` return: the readable GPT, wrapped, never patched: `FastGPT`.

A `FastGPT` holds the model (`.model`, its weight matrices swapped for fast modules by
`pack_for_cpu` or `quantize_int8`) and the one-token step the decoders call (`.step`: a
`FusedStep`, a `CompiledStep`, or the model's own `next_logits`). It meets the decoders'
`DecoderModel` protocol by passing each call to the model, except `next_logits`, which goes to
the step; every other attribute (`hooks`, `trace`, `run_with_cache`, `blocks`, ...) is the
model's, so whatever a learner does with a GPT they do with it. Printing one shows its parts.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..config import GPTConfig
from ..kv_cache import KVCache
from ..model import GPT
from .kernels import report

Step = Callable[[Tensor, KVCache], Tensor]  # tokens (b) -> logits (b v), the cache advanced


class FastGPT(nn.Module):
    def __init__(self, model: GPT, step: Step | None = None):
        super().__init__()
        self.model = model
        self.step = step or model.next_logits  # plain attribute: a FusedStep is no module

    # ---- the decoders' protocol (decoders.DecoderModel) ------------------------------------------

    @property
    def config(self) -> GPTConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def check_inputs(self, *args, **kwargs) -> Tensor:
        return self.model.check_inputs(*args, **kwargs)

    def transform(self, input_ids: Tensor, real: Tensor, cache: KVCache | None = None) -> Tensor:
        return self.model.transform(input_ids, real, cache)

    def head(self, hidden: Tensor) -> Tensor:
        return self.model.head(hidden)

    def new_cache(self, batch: int, max_length: int) -> KVCache:
        return self.model.new_cache(batch, max_length)

    def next_logits(self, tokens: Tensor, cache: KVCache) -> Tensor:
        return self.step(tokens, cache)

    # ---- everything else is the model's ------------------------------------------------------------

    def forward(self, *args, **kwargs) -> Tensor:
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # the module's own: model, its parameters and buffers
        except AttributeError:
            return getattr(self._modules["model"], name)

    def describe(self) -> list[str]:
        """Each kind of matrix's kernel per row count, and how the step runs."""
        return report(self.model) + [f"step: {'module by module' if self.step == self.model.next_logits else repr(self.step)}"]

    def extra_repr(self) -> str:
        return "\n".join(self.describe())
