"""minigpt.analysis against transformers (eager attention, hooks on c_proj standing in for the
head_mask that transformers 5.x removed) and its own properties.

Tolerances: attention patterns 1e-6 (probabilities in [0, 1], float32 reassociation only);
logits 1e-5 and losses 1e-5 (float32, the same sums in another order); importance 1e-4 relative
(a gradient through every layer, in float32).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decoders
from helpers import left_padded, max_abs_diff, positions, reference_and_ours
from minigpt import GPT, GPTConfig, analysis
from minigpt.fast import pack_for_cpu
from weights import save_gpt2

CONFIG = GPTConfig(n_layer=3, n_head=4, n_embd=24, vocab_size=50, n_positions=32)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return reference_and_ours(CONFIG, "hub", tmp_path_factory.mktemp("analysis"), seed=4, eager=True)


def padded_batch(seed: int = 0, lengths=(9, 5, 7)):
    return left_padded(CONFIG.vocab_size, seed, lengths)


def reference_labels(ids, mask):
    """-100 (ignored) at padding and at each row's first real token: in transformers' shifted loss
    that token is predicted from a padding position, and in ours padding predicts nothing."""
    first_real = mask.bool() & ~torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1).bool()
    return ids.masked_fill(~mask.bool() | first_real, -100)


def gate_hooks(reference, gates):
    """Multiply each head's slice of the input to transformers' attn.c_proj by its gate: the
    head_mask transformers 5.x no longer has."""
    d = CONFIG.head_dim

    def hook_for(layer):
        def scale(module, inputs):
            (x,) = inputs  # (b t (h d)): the heads' outputs, side by side
            return (x * gates[layer].repeat_interleave(d),)
        return scale

    return [block.attn.c_proj.register_forward_pre_hook(hook_for(i)) for i, block in enumerate(reference.transformer.h)]


def test_attention_patterns_equal_transformers_eager_on_a_padded_batch(pair):
    reference, ours = pair
    ids, mask = padded_batch()
    with torch.no_grad():
        theirs = reference(ids, attention_mask=mask, position_ids=positions(mask), output_attentions=True).attentions
        mine = ours.trace(ids, mask).attentions
    real = mask.bool()  # a padding query's row is meaningless in both (transformers spreads it uniformly)
    for layer, (a, b) in enumerate(zip(mine, theirs)):
        assert max_abs_diff(a.transpose(1, 2)[real], b.transpose(1, 2)[real]) <= 1e-6, f"layer {layer}"


def test_head_mask_zero_equals_zeroing_the_heads_input_to_c_proj(pair):
    reference, ours = pair
    ids, mask = padded_batch(1)
    head_mask = torch.ones(CONFIG.n_layer, CONFIG.n_head)
    head_mask[0, 1] = head_mask[2, 3] = head_mask[1, 0] = 0.0
    handles = gate_hooks(reference, head_mask)
    try:
        with torch.no_grad():
            theirs = reference(ids, attention_mask=mask, position_ids=positions(mask)).logits
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        mine = ours(ids, attention_mask=mask, head_mask=head_mask)
    real = mask.bool()
    assert max_abs_diff(mine[real], theirs[real]) <= 1e-5


def test_lm_loss_equals_transformers_loss_with_left_padding(pair):
    reference, ours = pair
    ids, mask = padded_batch(2)
    with torch.no_grad():
        theirs = reference(ids, attention_mask=mask, position_ids=positions(mask), labels=reference_labels(ids, mask)).loss
    mine = analysis.lm_loss(ours, ids, mask)
    assert abs(mine.item() - theirs.item()) <= 1e-5
    mine.backward()  # differentiable
    assert ours.wte.weight.grad is not None and ours.wte.weight.grad.abs().sum() > 0
    ours.zero_grad(set_to_none=True)


def test_head_importance_equals_the_gradient_through_transformers_gates(pair):
    reference, ours = pair
    ids, mask = padded_batch(3)
    gates = torch.ones(CONFIG.n_layer, CONFIG.n_head, requires_grad=True)
    handles = gate_hooks(reference, gates)
    try:
        loss = reference(ids, attention_mask=mask, position_ids=positions(mask), labels=reference_labels(ids, mask)).loss
        (gradient,) = torch.autograd.grad(loss, gates)
    finally:
        for handle in handles:
            handle.remove()
    mine = analysis.head_importance(ours, ids, mask, per_example=False, normalize=False)
    assert ((mine - gradient.abs()).abs() / gradient.abs().clamp(min=1e-12)).max() <= 1e-4
    normalized = analysis.head_importance(ours, ids, mask, per_example=False)
    assert torch.allclose(normalized, mine / mine.norm(dim=-1, keepdim=True), atol=1e-6)
    assert torch.allclose(normalized.norm(dim=-1), torch.ones(CONFIG.n_layer), atol=1e-5)  # the paper's per-layer L2


def test_batch_importance_over_several_batches_is_the_token_weighted_mean(pair):
    _, ours = pair
    batches = [padded_batch(5, lengths=(9, 4)), padded_batch(6, lengths=(3,)), (padded_batch(7)[0], None)]
    each = [analysis.head_importance(ours, ids, mask, per_example=False, normalize=False) for ids, mask in batches]
    counts = [int(analysis.predicted(ids, mask).sum()) for ids, mask in batches]
    expected = sum(c * i for c, i in zip(counts, each)) / sum(counts)
    assert torch.allclose(analysis.head_importance(ours, iter(batches), per_example=False, normalize=False), expected,
                          atol=1e-7)


def test_importance_per_example_is_the_mean_over_single_examples_however_they_are_batched(pair):
    """Michel et al.'s E_x |∂L(x)/∂ξ|: equal (1e-5) to a loop over the examples one at a time, each
    without its padding, and the same whether they come as one padded batch or in several."""
    _, ours = pair
    ids, mask = padded_batch(8, lengths=(9, 5, 7, 2, 8))
    alone = [analysis.head_importance(ours, row[m.bool()][None], normalize=False) for row, m in zip(ids, mask)]
    expected = torch.stack(alone).mean(dim=0)
    together = analysis.head_importance(ours, ids, mask, normalize=False)
    split = analysis.head_importance(ours, [(ids[:2], mask[:2]), (ids[2:], mask[2:])], normalize=False)
    assert max_abs_diff(together, expected) <= 1e-5 and max_abs_diff(split, expected) <= 1e-5
    batch_form = analysis.head_importance(ours, ids, mask, per_example=False, normalize=False)
    assert max_abs_diff(batch_form, expected) > 1e-4  # the batch form is another quantity


def test_importance_at_a_head_mask_is_the_gradient_there(pair):
    _, ours = pair
    ids, mask = padded_batch(9)
    head_mask = torch.ones(CONFIG.n_layer, CONFIG.n_head)
    head_mask[1, 2] = 0.0
    masked = analysis.head_importance(ours, ids, mask, head_mask=head_mask, normalize=False)
    rows = []
    for row, m in zip(ids, mask):  # by hand: each example's gradient at the masked gates
        gate = head_mask.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(analysis.lm_loss(ours, row[m.bool()][None], head_mask=gate), gate)
        rows.append(gradient.abs())
    assert max_abs_diff(masked, torch.stack(rows).mean(dim=0)) <= 1e-5


def test_prune_by_importance_follows_its_stop_rules(pair):
    _, ours = pair
    batches = [padded_batch(10), padded_batch(11)]
    curve = analysis.prune_by_importance(copy.deepcopy(ours), batches, fraction=0.25, rounds=20)
    assert [n for n, _ in curve.points] == [0, 3, 6, 9] and "every layer is down to its last head" in curve.stopped
    assert all(len(sum(r.values(), [])) == 3 for r in curve.removed)
    capped = analysis.prune_by_importance(copy.deepcopy(ours), batches, fraction=0.1, rounds=5, max_loss_increase=0.0)
    assert len(capped.points) <= 6 and (capped.stopped == "5 rounds done" or "loss rose" in capped.stopped)
    if "loss rose" in capped.stopped:
        assert capped.points[-1][1] > capped.points[0][1]


def test_logit_lens_reads_every_layer_and_ends_at_the_logits(pair):
    _, ours = pair
    ids, mask = padded_batch(8)
    lens = analysis.logit_lens(ours, ids, mask)
    assert lens.shape == (CONFIG.n_layer + 1, *ids.shape, CONFIG.vocab_size)
    with torch.no_grad():
        assert torch.equal(lens[-1], ours(ids, attention_mask=mask))
        embeddings = ours.trace(ids, mask).hidden_states[0]
        assert torch.equal(lens[0], ours.wte.unembed(ours.ln_f(embeddings)))


@st.composite
def model_batch_and_heads(draw):
    n_head = draw(st.integers(2, 4))
    config = GPTConfig(n_layer=draw(st.integers(1, 3)), n_head=n_head, n_embd=n_head * draw(st.sampled_from([2, 4])),
                       vocab_size=draw(st.integers(8, 40)), n_positions=24)
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = GPT(config).eval()
    with torch.no_grad():
        model.wte.weight.mul_(10)  # peaked logits, so decoding does not hinge on near-ties
        for block in model.blocks:
            block.attn.c_proj.weight.mul_(5)
    lengths = draw(st.lists(st.integers(2, 8), min_size=1, max_size=3))
    width = max(lengths)
    ids = torch.randint(0, config.vocab_size, (len(lengths), width))
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    heads = {}
    for layer in range(config.n_layer):
        drop = draw(st.lists(st.integers(0, n_head - 1), unique=True, max_size=n_head - 1))  # never all of a layer
        if drop:
            heads[layer] = drop
    return model, ids, mask, heads


def masked_copy(model, heads):
    """The model with those heads zeroed in its weights (c_proj's columns that read them): the
    head_mask, for code that takes no head_mask, such as the decoders."""
    copied = copy.deepcopy(model)
    d = model.config.head_dim
    with torch.no_grad():
        for layer, drop in heads.items():
            for head in drop:
                copied.blocks[layer].attn.c_proj.weight[:, head * d : (head + 1) * d] = 0
    return copied


def head_mask_of(model, heads):
    mask = torch.ones(model.config.n_layer, model.config.n_head)
    for layer, drop in heads.items():
        mask[layer, drop] = 0.0
    return mask


@given(model_batch_and_heads())
@settings(max_examples=25)
def test_pruning_equals_masking_for_logits_and_every_decoder(case):
    model, ids, mask, heads = case
    head_mask = head_mask_of(model, heads)
    masked = masked_copy(model, heads)
    with torch.no_grad():
        expected = model(ids, attention_mask=mask, head_mask=head_mask)
        assert max_abs_diff(masked(ids, attention_mask=mask), expected) <= 1e-5  # masked_copy is the mask
    pruned = analysis.prune_heads(copy.deepcopy(model), heads)
    removed = sum(len(drop) for drop in heads.values())
    # per head: c_attn loses 3d rows of (n_embd weights + a bias), c_proj d columns of n_embd weights
    per_head = model.config.head_dim * (4 * model.config.n_embd + 3)
    assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in model.parameters()) - removed * per_head
    real = mask.bool()
    with torch.no_grad():
        assert max_abs_diff(pruned(ids, attention_mask=mask)[real], expected[real]) <= 1e-5
        # head_mask keeps the original numbering on a pruned model: masking a pruned head changes nothing
        assert max_abs_diff(pruned(ids, attention_mask=mask, head_mask=head_mask)[real], expected[real]) <= 1e-5
    trace, unpruned = pruned.trace(ids, mask), model.trace(ids, mask, head_mask=head_mask)
    for layer, (pattern, before) in enumerate(zip(trace.attentions, unpruned.attentions)):  # original head numbers
        gone = heads.get(layer, [])
        kept = [h for h in range(model.config.n_head) if h not in gone]
        assert pattern.shape == before.shape and pattern[:, gone].isnan().all()
        assert max_abs_diff(pattern[:, kept], before[:, kept]) <= 1e-5
    options = dict(attention_mask=mask, max_new_tokens=5)
    assert torch.equal(decoders.greedy(pruned, ids, **options).sequences, decoders.greedy(masked, ids, **options).sequences)
    beam = dict(options, num_beams=2, num_return_sequences=2)
    assert torch.equal(decoders.beam_search(pruned, ids, **beam).sequences, decoders.beam_search(masked, ids, **beam).sequences)
    seeded = dict(options, generator=torch.Generator().manual_seed(0))
    assert torch.equal(decoders.sample(pruned, ids, **seeded).sequences,
                       decoders.sample(masked, ids, **dict(seeded, generator=torch.Generator().manual_seed(0))).sequences)
    assert analysis.pruned_heads(pruned) == {layer: sorted(drop) for layer, drop in heads.items()}
    entropy = analysis.attention_entropy(pruned, ids, mask)
    assert entropy.isnan().sum() == sum(len(d) for d in heads.values())  # a pruned head has no attention


@given(model_batch_and_heads(), st.data())
@settings(max_examples=15)
def test_pruning_in_two_steps_equals_pruning_at_once(case, data):
    model, ids, mask, heads = case
    first = {layer: data.draw(st.lists(st.sampled_from(drop), unique=True)) for layer, drop in heads.items()}
    second = {layer: [h for h in drop if h not in first[layer]] for layer, drop in heads.items()}
    stepwise = analysis.prune_heads(copy.deepcopy(model), first)
    stepwise = analysis.prune_heads(stepwise, {layer: drop for layer, drop in second.items() if drop})
    at_once = analysis.prune_heads(copy.deepcopy(model), heads)
    with torch.no_grad():
        assert max_abs_diff(stepwise(ids, attention_mask=mask), at_once(ids, attention_mask=mask)) <= 1e-6


@given(model_batch_and_heads())
@settings(max_examples=25)
def test_entropy_lies_between_zero_and_log_visible_keys_and_is_never_nan(case):
    model, ids, mask, _ = case
    entropy = analysis.attention_entropy(model, ids, mask)
    assert not entropy.isnan().any() and (entropy >= 0).all()
    # each real query q sees n_q real keys, so its entropy is at most log n_q; so is the mean of them
    visible = mask.cumsum(dim=1)[mask.bool()].float()
    assert (entropy <= visible.log().mean() + 1e-5).all()


def test_entropy_at_its_two_ends():
    """A query that sees one key has entropy 0; with every score equal (q and k weights zero) a
    query that sees n keys spreads evenly over them: entropy log n."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=4, vocab_size=10, n_positions=8)
    model = GPT(config).eval()
    ids = torch.zeros(1, 1, dtype=torch.long)  # one token: every query sees exactly one key
    assert torch.equal(analysis.attention_entropy(model, ids), torch.zeros(1, 2))
    ids = torch.randint(0, 10, (1, 6))
    with torch.no_grad():
        model.blocks[0].attn.c_attn.weight.zero_()  # every score 0: attention spreads evenly
        model.blocks[0].attn.c_attn.bias.zero_()
    uniform = torch.tensor([math.log(n) for n in range(1, 7)]).mean()
    assert torch.allclose(analysis.attention_entropy(model, ids), uniform.expand(1, 2), atol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda m: analysis.prune_heads(m, {0: [0, 1, 2, 3]}), "would leave layer 0 with no head"),
    (lambda m: analysis.prune_heads(m, {3: [0]}), r"layer must be in \[0, 2\], got 3"),
    (lambda m: analysis.prune_heads(m, {0: [4]}), r"heads\[0\] entry must be in \[0, 3\], got 4"),
    (lambda m: analysis.prune_heads(m, {0: 1}), r"heads\[0\] must be a list"),
    (lambda m: analysis.prune_heads(m, [0]), "heads must be a dict"),
    (lambda m: analysis.prune_heads(analysis.prune_heads(m, {1: [2]}), {1: [2]}), "head 2 of layer 1 is already pruned"),
    (lambda m: analysis.prune_heads(pack_for_cpu(m), {0: [1]}), "prune before packing"),
    (lambda m: save_gpt2(analysis.prune_heads(m, {2: [0]}), "/nonexistent/x"), r"cannot save a model with pruned heads \(layers \[2\]\)"),
    (lambda m: analysis.lm_loss(m, torch.tensor([[3]])), "a loss needs at least two tokens"),
    (lambda m: analysis.lm_loss(m, torch.tensor([[3, 4]]), torch.tensor([[0, 1]])), "nothing to predict"),
    (lambda m: analysis.head_importance(m, []), "head_importance got no batches"),
    (lambda m: analysis.head_importance(m, torch.tensor([[3, 4]]), normalize="yes"), "normalize must be True or False"),
])
def test_bad_input_is_named(call, message):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=message):
        call(GPT(CONFIG).eval())


def test_decoders_keep_the_alternatives_asked_for_and_whole_rows_on_request():
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    ids, mask = padded_batch(9)
    eos = 7
    for run in (lambda **kw: decoders.greedy(model, ids, attention_mask=mask, max_new_tokens=6, eos_token_id=eos, **kw),
                lambda **kw: decoders.sample(model, ids, attention_mask=mask, max_new_tokens=6, eos_token_id=eos, top_k=3,
                                             generator=torch.Generator().manual_seed(1), **kw),
                lambda **kw: decoders.beam_search(model, ids, attention_mask=mask, max_new_tokens=6, num_beams=3,
                                                  eos_token_id=eos, **kw)):
        out = run(alternatives=8, keep_logprobs=True)
        new = out.new_tokens.shape[1]
        assert out.alternatives.shape == (ids.shape[0], new, 8) and out.step_logprobs.shape == (ids.shape[0], new, 50)
        assert torch.allclose(out.step_logprobs.exp().sum(-1), torch.ones(ids.shape[0], new), atol=1e-5)
        chosen = out.step_logprobs.gather(-1, out.new_tokens[..., None])[..., 0]
        alive = out.attention_mask[:, ids.shape[1]:].bool()
        assert torch.allclose(chosen[alive], out.scores[alive], atol=1e-6)  # the row the token was chosen from
        assert run(alternatives=0).alternatives.shape[-1] == 0 and run().step_logprobs is None


def test_choices_never_list_a_token_a_processor_removed():
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    out = decoders.sample(model, torch.tensor([[1, 2, 3]]), max_new_tokens=4, top_k=2, alternatives=5,
                          generator=torch.Generator().manual_seed(0))
    assert (out.alternatives[..., 2:] == -1).all() and (out.alternative_probs[..., 2:] == 0).all()
    table = out.choices(0)
    for step in range(4):
        listed = table.splitlines()[step + 1].split()[3::2]  # the alternative ids of that step
        assert len(listed) == 2 and all(int(i) >= 0 for i in listed)


def test_mask_and_recompute_stops_at_one_head_a_layer_and_pruning_takes_what_it_found():
    """The course's flow: close the least important head, measure again, repeat; then prune what the
    loop closed. The loop never closes a layer's last head, as pruning never removes it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=4)).eval()
    ids = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    mask, rounds = None, 0
    with pytest.raises(ValueError, match="every layer is down to one open head"):
        while True:
            mask = analysis.mask_least_important(model, [(ids, None)], mask)
            rounds += 1
    assert rounds == 2 * 3 and mask.sum(dim=1).tolist() == [1, 1]
    pruned = analysis.prune_heads(copy.deepcopy(model), analysis.masked_heads(mask))
    with torch.no_grad():
        assert max_abs_diff(pruned(ids), model(ids, head_mask=mask)) <= 1e-5
    with pytest.raises(ValueError, match=r"head_mask must have shape \(2, 4\)"):
        analysis.mask_least_important(model, [(ids, None)], torch.ones(4, 2))
