"""Properties of the model that hold for any weights and inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minigpt import GPT, GPTConfig

TOL = 1e-5  # float32 reassociation only: the same numbers summed in another order


@st.composite
def model_and_ids(draw):
    n_head = draw(st.integers(1, 3))
    config = GPTConfig(
        n_layer=draw(st.integers(1, 2)), n_head=n_head, n_embd=n_head * draw(st.sampled_from([2, 5, 8])),
        vocab_size=draw(st.integers(2, 50)), n_positions=draw(st.integers(4, 20)),
    )
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = GPT(config).eval()
    with torch.no_grad():
        model.wte.weight.mul_(20)  # larger logits, so differences would show
    t = draw(st.integers(1, config.n_positions))
    ids = torch.randint(0, config.vocab_size, (draw(st.integers(1, 3)), t))
    return model, ids


@given(model_and_ids(), st.data())
def test_left_padding_does_not_change_a_rows_logits(model_ids, data):
    """Rows of different lengths, left-padded (with arbitrary pad tokens) to a common width."""
    model, ids = model_ids
    b, t = ids.shape
    lengths = [data.draw(st.integers(1, t)) for _ in range(b)]
    width = max(lengths) + data.draw(st.integers(0, model.config.n_positions - max(lengths)))
    batch = torch.randint(0, model.config.vocab_size, (b, width))  # the padding: any tokens at all
    mask = torch.zeros(b, width, dtype=torch.long)
    for row, n in enumerate(lengths):
        batch[row, width - n :] = ids[row, :n]
        mask[row, width - n :] = 1
    with torch.no_grad():
        padded = model(batch, attention_mask=mask)
        for row, n in enumerate(lengths):
            alone = model(ids[row : row + 1, :n])[0]
            assert (padded[row, width - n :] - alone).abs().max() <= TOL


@given(model_and_ids(), st.data())
def test_future_tokens_never_change_past_logits(model_ids, data):
    model, ids = model_ids
    t = ids.shape[1]
    cut = data.draw(st.integers(1, t))
    changed = ids.clone()
    changed[:, cut:] = torch.randint(0, model.config.vocab_size, changed[:, cut:].shape)
    with torch.no_grad():
        assert (model(ids)[:, :cut] - model(changed)[:, :cut]).abs().max() <= TOL


@given(model_and_ids(), st.data())
def test_cached_equals_uncached_for_any_split_into_chunks(model_ids, data):
    model, ids = model_ids
    b, t = ids.shape
    cuts = sorted(set(data.draw(st.lists(st.integers(1, t - 1), max_size=4)) if t > 1 else []))
    bounds = [0, *cuts, t]
    cache = model.new_cache(b, t)
    with torch.no_grad():
        chunks = [model(ids[:, lo:hi], cache=cache) for lo, hi in zip(bounds, bounds[1:])]
        full = model(ids)
    assert cache.length == t
    assert (torch.cat(chunks, dim=1) - full).abs().max() <= TOL


def test_cached_padded_batch_equals_each_row_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny")).eval()
    ids = torch.randint(0, 101, (2, 8))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    cache = model.new_cache(2, 12)
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=cache)
        step = model(torch.tensor([[7], [9]]), cache=cache)[:, -1]  # mask left out: the cache remembers
        alone = model(torch.cat([ids[0, 3:], torch.tensor([7])])[None])[0, -1]
    assert (step[0] - alone).abs().max() <= TOL


def test_kv_cache_reorder_grow_and_memory():
    model = GPT(GPTConfig.preset("tiny")).eval()
    cache = model.new_cache(2, 10)
    c = model.config
    assert cache.nbytes == 2 * (c.n_layer * 2 * c.n_head * 10 * c.head_dim * 4) + 2 * 10
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3], [4, 5, 6]]), cache=cache)
        grown = cache.take_rows(torch.tensor([0, 0, 0, 1, 1, 1]))
        assert grown.batch == 6 and grown.length == 3
        assert torch.equal(torch.stack(grown.keys)[:, 3], torch.stack(cache.keys)[:, 1])  # (l b h s d)
        before = torch.stack(cache.keys)[:, :, :, :3].clone()
        cache.reorder(torch.tensor([1, 0]))
        assert torch.equal(torch.stack(cache.keys)[:, 0, :, :3], before[:, 1])
        with pytest.raises(ValueError, match="KVCache is full"):
            model(torch.ones(2, 8, dtype=torch.long), cache=cache)


def test_gradients_flow_to_every_parameter_in_training_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16, dropout=0.1))
    model.train()
    ids = torch.randint(0, 50, (3, 12))
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not torch.equal(model(ids), model(ids))  # dropout is on in training
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids))  # and off in eval


def test_bad_inputs_are_named():
    model = GPT(GPTConfig.preset("tiny")).eval()
    with pytest.raises(ValueError, match="token id 101 is outside the vocabulary"):
        model(torch.tensor([[1, 101]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="n_positions=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="head_mask must have shape"):
        model(torch.tensor([[1, 2]]), head_mask=torch.ones(3, 3))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=500, n_positions=64)).eval()
    ids = torch.randint(0, 500, (2, 40))
    with torch.no_grad():
        on_cpu = model(ids)
        on_gpu = model.to("cuda")(ids.cuda()).cpu()
    # TF32 may be used for float32 matmuls on the GPU: ~1e-3 relative
    assert (on_cpu - on_gpu).abs().max() <= 1e-2
