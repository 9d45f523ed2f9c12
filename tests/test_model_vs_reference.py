"""Our GPT against transformers.GPT2LMHeadModel on random-weight checkpoints in both public layouts.

Tolerances (float32): max |Δlogits| <= 1e-4. Both models compute the same float32 operations in a
different order (fused qkv split, attention kernel, LayerNorm); the differences measured are a
few 1e-7 on small configs and a few 1e-6 at the 124M shape, so 1e-4 leaves room for other BLAS
builds while still catching any real mistake (a swapped weight moves logits by O(0.1..1)).
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import LAYOUTS, max_abs_diff, random_reference, reference_and_ours, small_configs, write_checkpoint
from minigpt import GPT, GPTConfig, fused_attention, gpt2_block
from minigpt.fast import pack_for_cpu
from weights import load_gpt2

FP32_TOL = 1e-4


def reference_trace(reference, ids: torch.Tensor):
    """transformers' logits and hidden states. Its last hidden state is ln_f(last block's
    output); ours is the block's output itself, so the tests apply our ln_f before comparing."""
    with torch.no_grad():
        out = reference(ids, output_hidden_states=True)
    return out.logits, list(out.hidden_states)


@given(config=small_configs(), layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16), data=st.data())
def test_logits_and_hidden_states_match_reference(config, layout, seed, data, tmp_path_factory):
    reference, ours = reference_and_ours(config, layout, tmp_path_factory.mktemp("ckpt"), seed)
    b = data.draw(st.integers(1, 3))
    t = data.draw(st.integers(1, config.n_positions))
    ids = torch.randint(0, config.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))
    logits, theirs = reference_trace(reference, ids)
    with torch.no_grad():
        trace = ours.trace(ids)
    assert max_abs_diff(trace.logits, logits) <= FP32_TOL
    assert len(trace.hidden_states) == len(theirs) == config.n_layer + 1
    for layer, (mine, ref) in enumerate(zip(trace.hidden_states[:-1], theirs[:-1])):
        assert max_abs_diff(mine, ref) <= FP32_TOL, f"hidden state {layer}"
    assert max_abs_diff(trace.after_ln_f, theirs[-1]) <= FP32_TOL  # transformers' last state is after ln_f
    with torch.no_grad():
        assert torch.equal(trace.after_ln_f, ours.ln_f(trace.hidden_states[-1]))  # ours before it


@given(config=small_configs(), seed=st.integers(0, 2**16))
@settings(max_examples=10)
def test_fused_attention_gives_the_same_logits(config, seed, tmp_path_factory):
    directory = write_checkpoint(random_reference(config, seed), tmp_path_factory.mktemp("ckpt"), "hub")
    explicit = load_gpt2(directory)
    fused = load_gpt2(directory, make_block=functools.partial(gpt2_block, attend=fused_attention))
    ids = torch.randint(0, config.vocab_size, (2, config.n_positions), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[0, : config.n_positions // 2] = 0  # padding too, so the masks of both kernels are exercised
    with torch.no_grad():
        assert max_abs_diff(explicit(ids, mask), fused(ids, mask)) <= FP32_TOL


def test_trace_of_a_fused_model_says_what_is_missing():
    model = GPT(GPTConfig.preset("tiny"), make_block=functools.partial(gpt2_block, attend=fused_attention))
    with pytest.raises(ValueError, match="explicit_attention"):
        model.trace(torch.tensor([[1, 2, 3]]))


def test_attention_patterns_are_causal_distributions(tmp_path):
    _, ours = reference_and_ours(GPTConfig.preset("tiny"), "hub", tmp_path)
    ids = torch.randint(0, 101, (2, 7))
    with torch.no_grad():
        trace = ours.trace(ids)
    assert len(trace.attentions) == 2
    for pattern in trace.attentions:
        assert pattern.shape == (2, 2, 7, 7)  # (b h t t)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 2, 7))
        assert torch.all(pattern.triu(diagonal=1) == 0)  # nothing attends to the future


def test_head_mask_zero_equals_removing_the_head_from_the_output_projection(tmp_path):
    """Zeroing head 1 of layer 0 must equal zeroing the columns of c_proj that read that head."""
    config = GPTConfig.preset("tiny")
    _, ours = reference_and_ours(config, "hub", tmp_path)
    ids = torch.randint(0, config.vocab_size, (2, 9))
    head_mask = torch.ones(config.n_layer, config.n_head)
    with torch.no_grad():
        assert torch.equal(ours(ids, head_mask=head_mask), ours(ids))
        head_mask[0, 1] = 0.0
        masked = ours(ids, head_mask=head_mask)
        d = config.head_dim
        ours.blocks[0].attn.c_proj.weight[:, d : 2 * d] = 0.0
        assert max_abs_diff(masked, ours(ids)) <= FP32_TOL


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 5e-3), (torch.bfloat16, 5e-2)])
def test_half_precision_is_as_accurate_as_the_reference(dtype, tolerance, tmp_path):
    """In float16/bfloat16 each model rounds differently, so we measure both against the float32
    reference: our error must be no worse than transformers' own at that precision (plus a
    margin of half the tolerance), and both under the tolerance.
    Measured on this config (logits of scale ~1, three seeds): float16 5e-4..6e-4 for both
    models, bfloat16 4e-3..5e-3 for both. The tolerances are 10x that: float16 keeps 11
    significant bits (~5e-4 relative rounding), bfloat16 8 (~4e-3), and the error of a sum of a
    few hundred rounded products grows with its length and with the random inputs."""
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=300, n_positions=32)
    reference, ours = reference_and_ours(config, "hub", tmp_path, dtype=dtype)
    ids = torch.randint(0, config.vocab_size, (2, 32))
    with torch.no_grad():
        exact = reference(ids).logits
        their_error = max_abs_diff(reference.to(dtype)(ids).logits, exact)
        our_error = max_abs_diff(ours(ids), exact)
    assert ours.dtype == dtype
    assert our_error <= tolerance and their_error <= tolerance
    assert our_error <= their_error + tolerance / 2


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_size_gpt2_matches_reference(layout, tmp_path):
    """The 124M shape: 12 layers, 12 heads, 768 wide, 50257 tokens, 1024 positions."""
    config = GPTConfig.preset("gpt2")
    reference, ours = reference_and_ours(config, layout, tmp_path)
    ids = torch.randint(0, config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1))
    logits, theirs = reference_trace(reference, ids)
    with torch.no_grad():
        trace = ours.trace(ids)
    assert max_abs_diff(trace.logits, logits) <= FP32_TOL
    for layer, (mine, ref) in enumerate(zip(trace.hidden_states[:-1], theirs[:-1])):
        assert max_abs_diff(mine, ref) <= FP32_TOL, f"hidden state {layer}"
    assert torch.equal(trace.logits.argmax(-1), logits.argmax(-1))
    with torch.no_grad():
        packed = pack_for_cpu(ours)(ids)  # the fast CPU path, same weights
    assert max_abs_diff(packed, logits) <= FP32_TOL
