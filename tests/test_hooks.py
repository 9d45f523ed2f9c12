"""Hook points: every activation equals transformers' GPT-2 read through PyTorch forward hooks on
its modules; a patch, an ablation and a steering edit equal the same edit made by hooks on
transformers' model (in its plain forward and in generate()); and the properties that make hooks
safe to use: an identity hook, or a patch with a run's own activations, changes nothing.

Tolerance 1e-5: float32, the same arithmetic in another order (the deepest activations, after
three blocks, differ by about 1e-6); attention patterns as in test_analysis (1e-6).
"""

from __future__ import annotations

import functools

import pytest
import torch
from einops import rearrange
from hypothesis import given
from hypothesis import strategies as st

import decoders
from helpers import left_padded, max_abs_diff, positions, reference_and_ours
from minigpt import GPT, GPTConfig, fused_attention, gpt2_block

CONFIG = GPTConfig(n_layer=3, n_head=4, n_embd=24, vocab_size=50, n_positions=32)
TOL = 1e-5
PER_BLOCK = ["resid_pre", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.pattern", "attn.z", "attn_out",
             "resid_mid", "mlp.pre", "mlp.post", "mlp_out", "resid_post"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return reference_and_ours(CONFIG, "hub", tmp_path_factory.mktemp("hooks"), seed=3, eager=True)


def padded_batch(seed: int = 0):
    return left_padded(CONFIG.vocab_size, seed)


def reference_activations(reference, ids, mask) -> dict[str, torch.Tensor]:
    """transformers' GPT-2 activations under our names, read by forward hooks on its modules."""
    seen, handles = {}, []
    h = CONFIG.n_head

    def output(name, transform=lambda x: x):
        def hook(module, inputs, out):
            seen[name] = transform(out[0] if isinstance(out, tuple) else out)
        return hook

    def first_input(name, transform=lambda x: x):
        def hook(module, inputs):
            seen[name] = transform(inputs[0])
        return hook

    model = reference.transformer
    handles.append(model.drop.register_forward_hook(output("embed")))
    for i, block in enumerate(model.h):
        split = lambda part: (lambda x: rearrange(x, "b t (three h d) -> three b h t d", three=3, h=h)[part])  # noqa: E731
        handles += [
            block.register_forward_pre_hook(first_input(f"blocks.{i}.resid_pre")),
            block.attn.c_attn.register_forward_hook(output(f"blocks.{i}.attn.q", split(0))),
            block.attn.c_attn.register_forward_hook(output(f"blocks.{i}.attn.k", split(1))),
            block.attn.c_attn.register_forward_hook(output(f"blocks.{i}.attn.v", split(2))),
            block.attn.c_proj.register_forward_pre_hook(
                first_input(f"blocks.{i}.attn.z", lambda x: rearrange(x, "b t (h d) -> b t h d", h=h))),
            block.attn.register_forward_hook(output(f"blocks.{i}.attn_out")),
            block.ln_2.register_forward_pre_hook(first_input(f"blocks.{i}.resid_mid")),
            block.mlp.c_fc.register_forward_hook(output(f"blocks.{i}.mlp.pre")),
            block.mlp.act.register_forward_hook(output(f"blocks.{i}.mlp.post")),
            block.mlp.register_forward_hook(output(f"blocks.{i}.mlp_out")),
            block.register_forward_hook(output(f"blocks.{i}.resid_post")),
        ]
    handles.append(model.ln_f.register_forward_hook(output("ln_f")))
    try:
        with torch.no_grad():
            out = reference(ids, attention_mask=mask, position_ids=positions(mask), output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    seen["logits"] = out.logits
    for i, pattern in enumerate(out.attentions):
        seen[f"blocks.{i}.attn.pattern"] = pattern
    return seen


def reference_logits(reference, handle, ids, mask) -> torch.Tensor:
    """transformers' logits with the hook behind `handle` in place; the hook is removed after."""
    try:
        with torch.no_grad():
            return reference(ids, attention_mask=mask, position_ids=positions(mask)).logits
    finally:
        handle.remove()


def real_part(name: str, value: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The entries at real query positions: a padding query's row means nothing in either model."""
    if value.dim() == 4 and name.split(".")[-1] in ("q", "k", "v", "scores", "pattern"):  # (b h t ...)
        value = value.transpose(1, 2)
    if name.endswith(("scores", "pattern")):  # keys too: both models give padding keys no weight
        value = value.masked_fill(~real[:, None, None, :], 0.0)
    return value[real]


def test_every_activation_equals_transformers_read_through_its_modules(pair):
    reference, ours = pair
    ids, mask = padded_batch()
    theirs = reference_activations(reference, ids, mask)
    with torch.no_grad():
        logits, mine = ours.run_with_cache(ids, attention_mask=mask)
    expected = ["embed", *(f"blocks.{i}.{n}" for i in range(CONFIG.n_layer) for n in PER_BLOCK), "ln_f", "logits"]
    assert list(mine) == expected  # every name, in the order of the forward pass
    assert torch.equal(logits, mine["logits"])
    real = mask.bool()
    for name, value in mine.items():
        if name.endswith("scores"):
            continue  # transformers forms no scores module output; checked against its q and k below
        assert max_abs_diff(real_part(name, value, real), real_part(name, theirs[name], real)) <= TOL, name
    for i in range(CONFIG.n_layer):  # scores = q kᵀ / √d, masked, from transformers' own q and k
        q, k = theirs[f"blocks.{i}.attn.q"], theirs[f"blocks.{i}.attn.k"]
        scores = (q @ k.transpose(-2, -1)) / CONFIG.head_dim**0.5
        # causal, real keys only; a padding query may see itself (an all -inf row would be NaN), and
        # what it sees means nothing (its stream differs in the two models after the first layer)
        allowed = ((torch.ones(9, 9).tril().bool() & real[:, None, None, :]) | torch.eye(9).bool()).expand_as(scores)
        compared = allowed & real[:, None, :, None]
        assert max_abs_diff(mine[f"blocks.{i}.attn.scores"][compared], scores[compared]) <= TOL
        assert bool((mine[f"blocks.{i}.attn.scores"][~allowed] == float("-inf")).all())


def test_a_residual_patch_equals_the_same_patch_by_a_hook_on_transformers(pair):
    reference, ours = pair
    ids, mask = padded_batch(1)
    clean, _ = padded_batch(2)
    with torch.no_grad():
        _, acts = ours.run_with_cache(clean, attention_mask=mask, names=["blocks.1.resid_pre"])
    source = acts["blocks.1.resid_pre"]

    def patch(x):  # the clean run's stream at position 6, everywhere else the corrupted run's
        x = x.clone()
        x[:, 6] = source[:, 6]
        return x

    with torch.no_grad(), ours.hooks({"blocks.1.resid_pre": patch}):
        mine = ours(ids, attention_mask=mask)
    handle = reference.transformer.h[1].register_forward_pre_hook(lambda module, inputs: (patch(inputs[0]),) + inputs[1:])
    theirs = reference_logits(reference, handle, ids, mask)
    real = mask.bool()
    assert max_abs_diff(mine[real], theirs[real]) <= TOL
    with torch.no_grad():
        assert max_abs_diff(mine[real], ours(ids, attention_mask=mask)[real]) > 1e-3  # the patch did something


def test_a_head_ablation_equals_zeroing_it_in_transformers_and_head_mask_zero(pair):
    reference, ours = pair
    ids, mask = padded_batch(3)
    layer, head, d = 1, 2, CONFIG.head_dim

    def ablate(z):  # z (b t h d)
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    with torch.no_grad(), ours.hooks({f"blocks.{layer}.attn.z": ablate}):
        mine = ours(ids, attention_mask=mask)

    def zero_input(module, inputs):
        x = inputs[0].clone()
        x[..., head * d:(head + 1) * d] = 0.0
        return (x,)

    handle = reference.transformer.h[layer].attn.c_proj.register_forward_pre_hook(zero_input)
    theirs = reference_logits(reference, handle, ids, mask)
    real = mask.bool()
    assert max_abs_diff(mine[real], theirs[real]) <= TOL
    head_mask = torch.ones(CONFIG.n_layer, CONFIG.n_head)
    head_mask[layer, head] = 0.0
    with torch.no_grad():
        assert max_abs_diff(mine, ours(ids, attention_mask=mask, head_mask=head_mask)) <= 1e-6


def test_greedy_with_a_steering_hook_equals_generate_with_the_same_edit(pair):
    reference, ours = pair
    ids, mask = padded_batch(4)
    steer = torch.randn(CONFIG.n_embd, generator=torch.Generator().manual_seed(5)) * 3.0

    def add(x):  # every position of the stream leaving block 1, in the prefill and in each cached step
        return x + steer

    with ours.hooks({"blocks.1.resid_post": add}):
        mine = decoders.greedy(ours, ids, attention_mask=mask, max_new_tokens=10).sequences
    plain = decoders.greedy(ours, ids, attention_mask=mask, max_new_tokens=10).sequences
    handle = reference.transformer.h[1].register_forward_hook(lambda module, inputs, out: add(out))
    try:
        theirs = reference.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0,
                                    eos_token_id=None)
    finally:
        handle.remove()
    assert torch.equal(mine, theirs)
    assert not torch.equal(mine, plain)  # the steering changed what was written


def test_hooks_run_in_the_cached_steps_of_every_decoder(pair):
    _, ours = pair
    ids, mask = padded_batch(5)
    runs = {
        "greedy": lambda: decoders.greedy(ours, ids, attention_mask=mask, max_new_tokens=4),
        "sample": lambda: decoders.sample(ours, ids, attention_mask=mask, max_new_tokens=4,
                                          generator=torch.Generator().manual_seed(0)),
        "beam": lambda: decoders.beam_search(ours, ids, attention_mask=mask, num_beams=2, max_new_tokens=4),
        "diverse": lambda: decoders.diverse_beam_search(ours, ids, attention_mask=mask, num_beams=2, num_beam_groups=2,
                                                        diversity_penalty=1.0, max_new_tokens=4),
        "contrastive": lambda: decoders.contrastive_search(ours, ids, attention_mask=mask, penalty_alpha=0.6, top_k=2,
                                                           max_new_tokens=4),
    }
    for name, run in runs.items():
        shapes = []
        with ours.hooks({"blocks.0.attn.q": lambda q: shapes.append(tuple(q.shape))}):
            run()
        assert shapes[0][2] == 9 and len(shapes) >= 4, name  # the prompt's 9 positions, then one at a time
        assert all(shape[2] == 1 for shape in shapes[1:]), name


@given(seed=st.integers(0, 10**6), name=st.sampled_from(["embed", "ln_f", "logits"] + [f"blocks.{i}.{n}" for i in
                                                                                   range(3) for n in PER_BLOCK]))
def test_an_identity_hook_and_a_self_patch_change_nothing(pair, seed, name):
    _, ours = pair
    ids, mask = padded_batch(seed % 100)
    with torch.no_grad():
        plain = ours(ids, attention_mask=mask)
        _, acts = ours.run_with_cache(ids, attention_mask=mask, names=[name])
        with ours.hooks({name: lambda x: x}):
            same = ours(ids, attention_mask=mask)
        with ours.hooks({name: lambda x: acts[name].clone()}):
            patched = ours(ids, attention_mask=mask)
    assert torch.equal(same, plain) and torch.equal(patched, plain)


@given(layer=st.integers(0, 2), head=st.integers(0, 3), seed=st.integers(0, 100))
def test_ablating_a_head_by_hook_equals_head_mask_zero(pair, layer, head, seed):
    _, ours = pair
    ids, mask = padded_batch(seed)
    head_mask = torch.ones(CONFIG.n_layer, CONFIG.n_head)
    head_mask[layer, head] = 0.0

    def ablate(z):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    with torch.no_grad():
        with ours.hooks({f"blocks.{layer}.attn.z": ablate}):
            hooked = ours(ids, attention_mask=mask)
        masked = ours(ids, attention_mask=mask, head_mask=head_mask)
    assert torch.equal(hooked, masked)


def test_bad_names_shapes_and_kernels_are_clear_errors(pair):
    _, ours = pair
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"no hook point named 'blocks.9.resid_pre'; the hook points are: embed, "
                                         r"blocks.\{i\}.resid_pre, .*\(i in 0..2\)"):
        with ours.hooks({"blocks.9.resid_pre": lambda x: None}):
            pass
    with pytest.raises(ValueError, match="no hook point named 'attn.q'"):
        ours.run_with_cache(ids, names=["attn.q"])
    with pytest.raises(ValueError, match="names must be a list"):
        ours.run_with_cache(ids, names="embed")
    with pytest.raises(ValueError, match=r"the hook at blocks.0.mlp.pre returned \(2,\) torch.float32; it must return "
                                         r"a tensor of the activation's shape \(1, 3, 96\)"):
        with ours.hooks({"blocks.0.mlp.pre": lambda x: torch.zeros(2)}):
            ours(ids)
    with pytest.raises(ValueError, match="must be a function"):
        with ours.hooks({"embed": 3}):
            pass
    fused = GPT(CONFIG, make_block=functools.partial(gpt2_block, attend=fused_attention))
    with pytest.raises(ValueError, match="blocks.0.attn.pattern was not reached.*explicit_attention"):
        fused.run_with_cache(ids, names=["blocks.0.attn.pattern"])
    with pytest.raises(ValueError, match="blocks.0.attn.scores was not reached"):
        with fused.hooks({"blocks.0.attn.scores": lambda x: None, "embed": lambda x: None}):
            fused(ids)
    _, everything = fused.run_with_cache(ids)  # None: every hook point the pass reaches
    assert "blocks.0.attn.q" in everything and "blocks.0.attn.pattern" not in everything
    assert not any(point.fns for point in ours.hook_points().values())  # every hook taken off again
