"""pack_for_cpu: the same model with its weights in oneDNN's layout, for fast CPU inference.

Tolerances (float32): logits within 1e-4 of transformers, as for the unpacked model, and within
1e-5 of our unpacked model. oneDNN multiplies the same float32 numbers and sums them in another
order; the differences seen are ~1e-7 on these small configs and ~1e-6 at the 124M shape.
The decoders on a packed model are checked against generate() in test_decoders_vs_reference.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from helpers import max_abs_diff, reference_and_ours, small_configs
from minigpt import GPT, GPTConfig
from minigpt.fast import PackedLinear, pack_for_cpu
from weights import save_gpt2

FP32_TOL = 1e-4
SAME_MODEL_TOL = 1e-5

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")


@given(config=small_configs(), seed=st.integers(0, 2**16), data=st.data())
def test_packed_model_matches_reference(config, seed, data, tmp_path_factory):
    reference, ours = reference_and_ours(config, "hub", tmp_path_factory.mktemp("ckpt"), seed)
    packed = pack_for_cpu(ours)
    b, t = data.draw(st.integers(1, 3)), data.draw(st.integers(1, config.n_positions))
    ids = torch.randint(0, config.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert max_abs_diff(packed(ids), reference(ids).logits) <= FP32_TOL


@given(config=small_configs(), seed=st.integers(0, 2**16), data=st.data())
def test_packed_cached_padded_batch_equals_unpacked_in_one_pass(config, seed, data):
    """Left padding, then the sequence fed in two chunks through a KV cache."""
    torch.manual_seed(seed)
    plain = GPT(config).eval()
    packed = pack_for_cpu(copy.deepcopy(plain))
    b, t = data.draw(st.integers(1, 3)), data.draw(st.integers(2, config.n_positions))
    ids = torch.randint(0, config.vocab_size, (b, t))
    mask = torch.ones(b, t, dtype=torch.long)
    pads = [data.draw(st.integers(0, t - 2)) for _ in range(b)]
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    cut = data.draw(st.integers(max(pads) + 1, t - 1))  # every row has a real token in the first chunk
    cache = packed.new_cache(b, t)
    with torch.no_grad():
        whole = plain(ids, attention_mask=mask)
        first = packed(ids[:, :cut], attention_mask=mask[:, :cut], cache=cache)
        second = packed(ids[:, cut:], attention_mask=mask, cache=cache)
    real = mask.bool()
    assert max_abs_diff(torch.cat([first, second], dim=1)[real], whole[real]) <= SAME_MODEL_TOL


@given(n_in=st.integers(1, 40), n_out=st.integers(1, 40), bias=st.booleans(), lead=st.sampled_from([(), (3,), (2, 5)]),
       transposed=st.booleans(), seed=st.integers(0, 2**16))
def test_packed_linear_equals_the_linear_it_replaces(n_in, n_out, bias, lead, transposed, seed):
    torch.manual_seed(seed)
    linear = nn.Linear(n_in, n_out, bias=bias)
    x = torch.randn(*lead, n_in) if not transposed else torch.randn(n_in, 7).T  # a non-contiguous input too
    with torch.no_grad():
        assert max_abs_diff(PackedLinear(linear)(x), linear(x)) <= SAME_MODEL_TOL


def test_packing_swaps_every_linear_and_freezes_the_model():
    model = pack_for_cpu(GPT(GPTConfig.preset("tiny")))
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear" not in kinds and "PackedLinear" in kinds and "PackedTokenEmbedding" in kinds
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_packing_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="CPU float32 or bfloat16 model, got cpu torch.float16"):
        pack_for_cpu(GPT(GPTConfig.preset("tiny")).half())
    moved = pack_for_cpu(GPT(GPTConfig.preset("tiny"))).half()  # packed weights cannot follow
    with pytest.raises(ValueError, match="take CPU torch.float32 inputs, got cpu torch.float16"):
        moved(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="no gradient flows"):
        PackedLinear(nn.Linear(3, 2))(torch.randn(1, 3, requires_grad=True))


def test_a_packed_model_cannot_be_saved_and_says_so(tmp_path):
    with pytest.raises(ValueError, match=r"no tensor for blocks\.0\.attn\.c_attn\.weight.*unpacked"):
        save_gpt2(pack_for_cpu(GPT(GPTConfig.preset("tiny"))), tmp_path)
