"""Each swap-in of minigpt/components pinned to its definition, for any small config and input;
then every swap (alone and combined) kept to the model's own properties: cached = uncached,
padding does not change a row, future tokens do not change the past. tests/test_protocols.py runs
each through the KV cache, trace and every decoder."""

from __future__ import annotations

import math

import pytest
import torch
from einops import repeat
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import decoders
from minigpt import GPT, GPTConfig
from minigpt.components import RMSNorm, Rotary, SwiGLU, alibi_slopes, distances, query_positions
from minigpt.fast import optimize

TOL = 1e-5  # float32 reassociation only: the same numbers summed in another order
SWAPS = [dict(position="rope"), dict(position="alibi"), dict(norm="rmsnorm"), dict(mlp="swiglu"), dict(n_kv_head=1),
         dict(qk_norm=True), dict(window=2), dict(position="alibi", window=3, norm="rmsnorm"),
         dict(position="rope", mlp="swiglu", n_kv_head=1, qk_norm=True)]


def causal(t: int, before: int = 0, padding: int = 0) -> torch.Tensor:
    """allowed (1 1 t s) for t new queries after `before` real and `padding` padding slots (padding first)."""
    s = padding + before + t
    key, query = torch.arange(s)[None, :], torch.arange(padding + before, s)[:, None]
    return ((key <= query) & (key >= padding))[None, None]


@st.composite
def swapped_model(draw, swaps=None):
    n_kv_head = draw(st.sampled_from([1, 2]))
    config = GPTConfig(n_layer=draw(st.integers(1, 2)), n_head=2 * n_kv_head, n_embd=2 * n_kv_head * 4,
                       vocab_size=draw(st.integers(2, 40)), n_positions=16,
                       **(draw(st.sampled_from(SWAPS)) if swaps is None else swaps))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = GPT(config).eval()
    with torch.no_grad():
        model.wte.weight.mul_(20)  # larger logits, so differences would show
    return model


# ---- each swap against its definition ------------------------------------------------------------

@given(swapped_model(swaps={}), st.integers(0, 2**16))
def test_grouped_query_attention_with_a_head_per_key_equals_multi_head_attention(model, seed):
    config = model.config
    grouped = GPT(GPTConfig(**{**vars(config), "n_kv_head": config.n_head})).eval()
    grouped.load_state_dict(model.state_dict())  # the same shapes: n_kv_head = n_head is multi-head attention
    ids = torch.randint(0, config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.equal(grouped(ids), model(ids))


@given(swapped_model(swaps=dict(n_kv_head=1)), st.integers(0, 2**16))
def test_grouped_query_attention_equals_multi_head_attention_with_each_key_head_copied(model, seed):
    """g key/value heads shared by h/g query heads each = h heads whose keys and values repeat in groups."""
    config = model.config
    h, g, d = config.n_head, config.kv_heads, config.head_dim
    full = GPT(GPTConfig(**{**vars(config), "n_kv_head": None})).eval()
    weights = model.state_dict()
    for name in [n for n in weights if "c_attn" in n]:
        q, k, v = weights[name].split([h * d, g * d, g * d])
        k, v = (repeat(part, "(g d) ... -> (g r d) ...", g=g, r=h // g) for part in (k, v))
        weights[name] = torch.cat([q, k, v])
    full.load_state_dict(weights)
    ids = torch.randint(0, config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert (full(ids) - model(ids)).abs().max() <= TOL
    assert model.new_cache(1, 4).shape[2] == g  # the cache holds the key/value heads only


@given(st.integers(1, 8), st.integers(0, 50), st.integers(0, 5), st.integers(0, 2**16))
def test_rotary_scores_depend_only_on_relative_position(t, shift, padding, seed):
    """Every position moved by `shift` (that many real tokens before), padding anywhere: the same q·k."""
    generator = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 3, t, 8, generator=generator)  # (b h t d)
    rotary = Rotary(8)
    scores = [(lambda a, b: a @ b.transpose(-2, -1))(*rotary(q, k, causal(t, before=before, padding=padding)))
              for before in (0, shift)]
    assert (scores[0] - scores[1]).abs().max() <= TOL  # the angles are float32: about 1e-7 of a score off at these positions
    if shift:  # and the rotation does change the vectors themselves
        assert not torch.allclose(rotary(q, k, causal(t))[0], rotary(q, k, causal(t, before=shift))[0])


@given(st.integers(1, 8), st.integers(0, 6), st.integers(0, 4), st.sampled_from([1, 2, 3, 4, 8, 12]))
def test_alibi_bias_is_zero_at_distance_zero_and_grows_linearly(t, before, padding, heads):
    allowed = causal(t, before=before, padding=padding)
    far = distances(allowed)[0, 0]  # (t s)
    for i in range(t):
        for j in range(padding, padding + before + i + 1):  # the keys query i may see
            assert far[i, j] == before + i - (j - padding)  # how many real tokens back
    assert torch.equal(query_positions(allowed)[0, 0, :, 0], torch.arange(before, before + t))


def paper_slopes(n: int) -> list[float]:
    """Press et al. 2022: for n a power of two, start at 2^(-8/n) and multiply by it n - 1 times;
    otherwise the slopes of the closest power of two below n, then every other slope of twice that
    count, as many as are missing (the paper's code, `get_slopes`, written from its description)."""
    if math.log2(n).is_integer():
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]
    closest = 2 ** math.floor(math.log2(n))
    return paper_slopes(closest) + paper_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("heads", range(1, 17))
def test_alibi_slopes_are_the_papers(heads):
    assert alibi_slopes(heads).tolist() == pytest.approx(paper_slopes(heads), rel=1e-6)


def test_alibi_slopes_for_three_heads_are_the_papers_not_a_squeezed_sequence():
    assert sorted(alibi_slopes(3).tolist()) == pytest.approx([2**-8, 2**-4, 2**-2])  # the issue's {0.0039, 0.0625, 0.25}


def test_alibi_scores_are_the_products_less_slope_times_distance():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=4, n_embd=16, vocab_size=20, n_positions=16, position="alibi")).eval()
    with torch.no_grad():
        model.blocks[0].attn.c_attn.weight[:16].zero_()  # q = its bias, zeroed too: every product q·k is 0
        model.blocks[0].attn.c_attn.bias[:16].zero_()
    _, acts = model.run_with_cache(torch.tensor([[1, 2, 3, 4, 5]]), names=["blocks.0.attn.scores"])
    scores = acts["blocks.0.attn.scores"][0]  # (h t s), the masked entries -inf
    i, j = torch.tril_indices(5, 5)
    expected = -alibi_slopes(4)[:, None] * (i - j)  # 0 on the diagonal, then -slope per token back
    assert torch.allclose(scores[:, i, j], expected)
    assert (scores[:, j[i != j], i[i != j]] == float("-inf")).all()  # the future stays masked


@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**16))
def test_rmsnorm_equals_layernorm_on_zero_mean_inputs_and_torchs_rmsnorm_on_any(rows, width, seed):
    x = torch.randn(rows, width + 1, generator=torch.Generator().manual_seed(seed))
    gain = torch.randn(width + 1, generator=torch.Generator().manual_seed(seed + 1))
    ours, theirs, reference = RMSNorm(width + 1), nn.LayerNorm(width + 1), nn.RMSNorm(width + 1, eps=1e-5)
    with torch.no_grad():
        for norm in (ours, theirs, reference):
            norm.weight.copy_(gain)
        centred = x - x.mean(dim=-1, keepdim=True)
        # relative to the output's size: a row of tiny values (x^2 near eps) gives outputs near |gain|
        # whose rounding is relative; hypothesis found 1.2e-5 on an output of 1.85 (rows=3, width=1, seed=54)
        for mine, other in ((ours(centred), theirs(centred)), (ours(x), reference(x))):
            assert ((mine - other).abs() <= TOL * (1 + other.abs())).all()


def test_swiglu_is_silu_of_the_gate_times_the_value_projected():
    torch.manual_seed(0)
    mlp, x = SwiGLU(8, 12), torch.randn(2, 3, 8)
    w, v = mlp.c_fc.weight.split(12)
    bw, bv = mlp.c_fc.bias.split(12)
    silu = lambda z: z * torch.sigmoid(z)  # noqa: E731 (Swish with beta 1, Shazeer 2020 eq. 6)
    expected = (silu(x @ w.T + bw) * (x @ v.T + bv)) @ mlp.c_proj.weight.T + mlp.c_proj.bias
    assert (mlp(x) - expected).abs().max() <= TOL


@given(swapped_model(swaps={}), st.integers(1, 15), st.integers(0, 2**16))
def test_a_window_as_long_as_the_context_changes_nothing_and_a_window_of_one_sees_only_itself(model, t, seed):
    config = model.config
    wide = GPT(GPTConfig(**{**vars(config), "window": config.n_positions})).eval()
    wide.load_state_dict(model.state_dict())
    ids = torch.randint(0, config.vocab_size, (1, t), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.equal(wide(ids), model(ids))
    alone = GPT(GPTConfig(**{**vars(config), "window": 1})).eval()
    pattern = alone.trace(ids).attentions[0][0]  # (h t s)
    assert torch.equal(pattern, torch.eye(t).expand_as(pattern))


# ---- every swap keeps the model's properties -----------------------------------------------------

@given(swapped_model(), st.integers(1, 15), st.data())
def test_cached_equals_uncached_and_padding_changes_nothing_for_every_swap(model, t, data):
    config = model.config
    ids = torch.randint(0, config.vocab_size, (2, t), generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    cut = data.draw(st.integers(0, t - 1))
    with torch.no_grad():
        whole = model(ids)
        cache = model.new_cache(2, t)
        parts = [model(ids[:, :cut], cache=cache)] if cut else []
        parts += [model.next_logits(ids[:, i], cache)[:, None] for i in range(cut, t)]
        assert (torch.cat(parts, dim=1) - whole).abs().max() <= TOL
        pad = data.draw(st.integers(1, config.n_positions - t)) if t < config.n_positions else 0
        padded = torch.cat([torch.zeros(2, pad, dtype=torch.long), ids], dim=1)
        mask = torch.cat([torch.zeros(2, pad), torch.ones(2, t)], dim=1).long()
        assert (model(padded, attention_mask=mask)[:, pad:] - whole).abs().max() <= TOL
        if cut:
            changed = ids.clone()
            changed[:, cut:] = (changed[:, cut:] + 1) % config.vocab_size
            assert (model(changed)[:, :cut] - whole[:, :cut]).abs().max() <= TOL


@pytest.mark.parametrize("swaps", SWAPS, ids=lambda swaps: ",".join(swaps))
def test_a_swapped_model_saves_loads_and_optimizes(swaps, tmp_path):
    from weights import load_gpt2, save_gpt2

    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=30, n_positions=16, **swaps)
    model = GPT(config).eval()
    ids = torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(0))
    save_gpt2(model, tmp_path)
    loaded = load_gpt2(tmp_path)
    assert loaded.config == config and loaded.config.components == swaps
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    fast = optimize(loaded, weights="float32")  # the fused step refuses swaps: the module step runs
    assert fast.step == fast.model.next_logits  # module by module
    expected = decoders.greedy(model, ids, max_new_tokens=6).sequences
    assert torch.equal(decoders.greedy(fast, ids, max_new_tokens=6).sequences, expected)


def test_a_swapped_config_is_not_a_gpt2_to_transformers_and_a_plain_one_still_is():
    transformers = pytest.importorskip("transformers")
    swapped = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=10, n_positions=8, position="rope").to_hf_dict()
    assert swapped["model_type"] == "minigpt" and swapped["minigpt_components"] == {"position": "rope"}
    with pytest.raises((ValueError, KeyError)):
        transformers.AutoConfig.for_model(**swapped)
    plain = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=10, n_positions=8).to_hf_dict()
    assert "minigpt_components" not in plain and transformers.AutoConfig.for_model(**plain).model_type == "gpt2"
    assert GPTConfig.from_hf_dict(swapped).position == "rope"


def test_which_transformers_calls_refuse_a_swapped_checkpoint_is_what_the_readme_says(tmp_path):
    """The Auto classes refuse model_type 'minigpt'; GPT2LMHeadModel.from_pretrained, called directly,
    loads it with wpe newly initialized and other logits (the README says so, and points at load_gpt2)."""
    transformers = pytest.importorskip("transformers")
    from weights import load_gpt2, save_gpt2

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=10, n_positions=8, position="rope")).eval()
    save_gpt2(model, tmp_path)
    for auto in (transformers.AutoConfig, transformers.AutoModel, transformers.AutoModelForCausalLM):
        with pytest.raises(ValueError, match="model type `minigpt`"):
            auto.from_pretrained(tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(theirs(ids).logits, model(ids), atol=1e-3)
        assert torch.equal(load_gpt2(tmp_path)(ids), model(ids))


@pytest.mark.parametrize("fields, message", [
    (dict(n_head=4, n_kv_head=3), "n_kv_head (3) must divide n_head (4)"),
    (dict(n_head=2, n_kv_head=4), "n_kv_head must be"),
    (dict(position="sinusoidal"), "position must be one of"),
    (dict(norm="batchnorm"), "norm must be one of"),
    (dict(mlp="relu"), "mlp must be one of"),
    (dict(window=0), "window must be"),
    (dict(qk_norm=1), "qk_norm must be True or False"),
    (dict(n_head=4, n_embd=12, position="rope"), "head width n_embd / n_head = 3 is odd"),
])
def test_a_config_that_cannot_be_built_is_one_clear_error(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GPTConfig(**{"n_layer": 1, "n_head": 2, "n_embd": 8, "vocab_size": 10, "n_positions": 8, **fields})


def test_config_json_names_only_known_components():
    fields = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=10, n_positions=8, norm="rmsnorm").to_hf_dict()
    with pytest.raises(ValueError, match="unknown component"):
        GPTConfig.from_hf_dict({**fields, "minigpt_components": {"norm": "rmsnorm", "experts": 8}})
    with pytest.raises(ValueError, match="only read with model_type 'minigpt'"):
        GPTConfig.from_hf_dict({**fields, "model_type": "gpt2"})
    assert math.isclose(GPTConfig.from_hf_dict(fields).layer_norm_epsilon, 1e-5)
