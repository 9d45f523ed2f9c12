"""Hook points: named places in the forward pass where an activation can be read or replaced.

TransformerLens's idea (`HookPoint`, `run_with_cache`, `run_with_hooks`) in our names. The model,
the block, the attention and the MLP call a hook point on each activation a learner may want:
`q = self.hook_q(q)`. With no hook set the call returns its argument and costs one test, so the
compute path stays the transformer and nothing else. With one set, `fn(activation)` runs and its
result, unless None, replaces the activation for the rest of the pass: that is activation
patching, ablation and steering.

A hook point's name is where it lives: the attribute `hook_q` of the module at `blocks.3.attn` is
`blocks.3.attn.q`; the model's per-layer lists `hook_resid_pre[i]` are `blocks.{i}.resid_pre`. The
names and their shapes (README's axis letters; t = this call's positions, s = every position the
queries see):

    embed                                   b t e   token + position embedding
    blocks.{i}.resid_pre                    b t e   the residual stream entering block i
    blocks.{i}.attn.q / .k / .v             b h t d this call's queries, keys, values (k, v: b g t d,
                                                    the key/value heads, under grouped-query attention)
    blocks.{i}.attn.scores                  b h t s scaled and masked, before the softmax
    blocks.{i}.attn.pattern                 b h t s the softmax: where each query looks
    blocks.{i}.attn.z                       b t h d each head's weighted sum, before c_proj
    blocks.{i}.attn_out, .resid_mid         b t e   attention's output; the stream after adding it
    blocks.{i}.mlp.pre / .mlp.post          b t m   before and after the activation (SwiGLU's pre: b t 2m,
                                                    its gate and its value)
    blocks.{i}.mlp_out, .resid_post         b t e   the MLP's output; the stream leaving block i
    ln_f                                    b t e   after the final LayerNorm
    logits                                  b t v
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator

from torch import Tensor, nn

HookFn = Callable[[Tensor], "Tensor | None"]  # fn(activation) -> its replacement, or None to keep it


class HookPoint:
    """One named place in the forward pass. Not an nn.Module: a module call costs microseconds,
    and a 12-layer step passes about 180 of these."""

    def __init__(self) -> None:
        self.fns: list[HookFn] = []
        self.name = "?"  # set by `hook_points`, for messages
        self.reached = False  # whether a pass went through it while hooks were set

    def __call__(self, x: Tensor) -> Tensor:
        if not self.fns:
            return x
        self.reached = True
        for fn in self.fns:
            out = fn(x)
            if out is not None:
                if not isinstance(out, Tensor) or out.shape != x.shape or out.dtype != x.dtype:
                    shown = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(f"the hook at {self.name} returned {shown}; it must return a tensor of the "
                                     f"activation's shape {tuple(x.shape)} and dtype {x.dtype}, or None to keep it")
                x = out
        return x


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every hook point of `model`, by name, in the order of the forward pass."""
    found = {}
    for path, module in model.named_modules():
        for attribute, value in vars(module).items():
            if not attribute.startswith("hook_"):
                continue
            name = attribute.removeprefix("hook_")
            if isinstance(value, HookPoint):
                found[f"{path}.{name}" if path else name] = value
            elif isinstance(value, list) and value and all(isinstance(v, HookPoint) for v in value):
                found |= {f"blocks.{layer}.{name}": v for layer, v in enumerate(value)}  # the model's per-layer ones
    for name, point in found.items():
        point.name = name
    return dict(sorted(found.items(), key=lambda item: _forward_order(item[0])))


@contextlib.contextmanager
def hooks(model: nn.Module, fns: dict[str, HookFn]) -> Iterator[None]:
    """Set fn at each named hook point for the `with` block; every pass inside it calls them.

    A name that does not exist is an error listing those that do. A hook point that a pass did not
    reach (the scores and pattern of a fused attention kernel, which never forms them) is an error
    when the block ends."""
    if not isinstance(fns, dict):
        raise ValueError(f"hooks takes a dict of hook-point name -> function, got {type(fns).__name__}")
    if not fns:  # what forward does when no head_mask is given: nothing to walk for
        yield
        return
    points = hook_points(model)
    check_names(list(fns), points)
    for name, fn in fns.items():
        if not callable(fn):
            raise ValueError(f"the hook for {name} must be a function activation -> replacement or None, "
                             f"got {type(fn).__name__}")
    # every pass goes through `embed`: a no-op there tells whether a pass ran at all, so that a hook
    # no pass reached is an error even when it was the only one set
    witness = {"embed": lambda x: None} if "embed" in points and "embed" not in fns else {}
    with attached(points, fns | witness):
        yield
    passed = any(points[name].reached for name in [*fns, *witness])
    missed = [name for name in fns if not points[name].reached]
    if passed and missed:
        raise not_reached(missed[0])


@contextlib.contextmanager
def attached(points: dict[str, HookPoint], fns: dict[str, HookFn]) -> Iterator[None]:
    """fns at their points (names already checked) for the `with` block, then taken off again."""
    for name, fn in fns.items():
        points[name].reached = False
        points[name].fns.append(fn)
    try:
        yield
    finally:
        for name, fn in fns.items():
            points[name].fns.remove(fn)


def not_reached(name: str) -> ValueError:
    return ValueError(f"hook point {name} was not reached by the forward pass: its block never forms that "
                      "activation (a fused attention kernel forms no scores and no pattern; build the model "
                      "with explicit_attention to read them)")


def check_names(names: object, points: dict[str, HookPoint]) -> list[str]:
    """None (every hook point), or a list of names that exist, each once, in the order given."""
    if names is None:
        return list(points)
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"names must be a list of hook-point names, or None for all, got {names!r:.60}")
    unknown = [n for n in names if n not in points]
    if unknown:
        raise ValueError(f"no hook point named {unknown[0]!r}; the hook points are: {describe(points)}")
    return list(dict.fromkeys(names))


def describe(points: dict[str, HookPoint]) -> str:
    """The names, with the layers folded: blocks.{0..11}.attn.q, ..."""
    folded = list(dict.fromkeys(re.sub(r"^blocks\.\d+\.", "blocks.{i}.", name) for name in points))
    layers = sorted({int(m.group(1)) for name in points if (m := re.match(r"blocks\.(\d+)\.", name))})
    span = f"i in 0..{layers[-1]}" if layers else "no blocks"
    return ", ".join(folded) + f" ({span})"


def _forward_order(name: str) -> tuple:
    match = re.match(r"blocks\.(\d+)\.(.*)", name)
    if match is None:
        return (0 if name == "embed" else 2, 0, 0, name == "logits")
    inside = ["resid_pre", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.pattern", "attn.z", "attn_out",
              "resid_mid", "mlp.pre", "mlp.post", "mlp_out", "resid_post"]
    rest = match.group(2)
    return (1, int(match.group(1)), inside.index(rest) if rest in inside else len(inside), rest)
