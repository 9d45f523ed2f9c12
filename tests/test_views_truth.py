"""The views tell the truth: a pruned model's heads under their original numbers, a padded row
without its padding, every head of a GPT-2-shaped model inside a 1400 x 1000 window, the returned
paths of a beam search marked in its tree, and every token's label visible (a space, a newline,
a lone byte of a character)."""

from __future__ import annotations

import copy

import pytest
import torch

import decoders
from minigpt import GPT, GPTConfig, analysis
from minigpt.views.browser import open_offline

views = pytest.importorskip("minigpt.views")
SMALL = GPTConfig(vocab_size=60, n_positions=32, n_embd=16, n_layer=2, n_head=4)
GPT2_SHAPE = GPTConfig(vocab_size=60, n_positions=32, n_embd=48, n_layer=12, n_head=12)  # GPT-2's 12 x 12 heads
STRINGS = lambda ids: [f"t{i}" for i in ids]  # noqa: E731


def make(config: GPTConfig) -> GPT:
    torch.manual_seed(0)
    return GPT(config).eval()


def test_a_pruned_model_is_traced_and_drawn_under_its_original_head_numbers():
    model = make(SMALL)
    ids = torch.randint(0, 60, (1, 6), generator=torch.Generator().manual_seed(1))
    before = model.trace(ids).attentions[1][0]  # (h t t)
    gone = {1: [0, 1]}
    mask = torch.ones(2, 4)
    mask[1, :2] = 0
    masked = model.trace(ids, head_mask=mask).attentions[1][0]  # heads 2 and 3 see what pruning leaves
    pruned = analysis.prune_heads(copy.deepcopy(model), gone)
    trace, tokens = pruned.trace(ids), [f"w{i}" for i in range(6)]
    after = trace.attentions[1][0]
    assert after.shape == before.shape and after[:2].isnan().all()
    assert torch.allclose(after[2:], masked[2:], atol=1e-6)  # head 2 is drawn as head 2, not as head 0

    head = views.head_view(trace, tokens)
    heatmaps = head.figure.data  # layer by layer, every head
    assert len(heatmaps) == 2 * 4
    assert torch.tensor(heatmaps[4 + 2].z).allclose(after[2], atol=1e-6)
    assert "layer 1, head 0: pruned" in head.html and "layer 1, head 2\"" in head.html
    shown = views.model_view(trace, tokens).figure
    assert [a.text for a in shown.layout.annotations].count("pruned") == 2
    maps = views.figures.attention_maps(trace, tokens)
    titles = [axes.get_title() for axes in maps.axes]
    assert titles[4:8] == ["layer 1 head 0 (pruned)", "layer 1 head 1 (pruned)", "layer 1 head 2", "layer 1 head 3"]
    assert analysis.attention_entropy(pruned, ids)[1].isnan().tolist() == [True, True, False, False]


def test_a_padded_row_is_drawn_over_its_real_tokens_and_labels_with_its_padding_are_refused():
    model = make(SMALL)
    ids = torch.randint(0, 60, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0  # row 1: two positions of left padding
    trace = model.trace(ids, mask)
    alone = model.trace(ids[1:, 2:]).attentions[0][0]  # row 1's real tokens, unpadded: (h 4 4)
    real = [f"w{i}" for i in range(4)]
    view = views.head_view(trace, real, row=1)
    assert torch.tensor(view.figure.data[0].z).allclose(alone[0], atol=1e-5)
    assert len(views.model_view(trace, real, row=1).figure.data[0].z) == 4
    assert len(views.figures.attention_maps(trace, real, row=1, layer=0, head=0).axes[0].get_xticks()) == 4
    with pytest.raises(ValueError, match=r"tokens has 6 labels but there are 4 real tokens in this row \(its 2 padding"):
        views.head_view(trace, real + ["pad", "pad"], row=1)
    lens = analysis.logit_lens(model, ids, mask)
    texts = views.logit_lens_view(lens, real, STRINGS, row=1, attention_mask=mask).figure.data[0].text
    assert len(texts[0]) == 4
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        views.figures.logit_lens(lens, real, STRINGS, row=1, attention_mask=mask[:, 1:])


def test_labels_make_whitespace_and_lone_bytes_visible():
    from minigpt.views.checks import shown
    from weights import load_tokenizer

    assert [shown(x) for x in [" the", "\n", " ", "a\tb", ""]] == ["␣the", "↵", "␣", "a⇥b", "∅"]
    assert shown("abcdefghijklmnop", 8) == "abcdefg…"
    tok = load_tokenizer("gpt2")
    # one character in two tokens, each a part of its bytes: told apart, not both U+FFFD
    assert tok.token_strings(tok.encode("語")) == ["\\xe8\\xaa", "\\x9e"]


def test_the_tree_marks_the_paths_of_the_returned_sequences():
    model = make(SMALL)
    ids = torch.randint(0, 60, (2, 3), generator=torch.Generator().manual_seed(3))
    out = decoders.beam_search(model, ids, num_beams=3, num_return_sequences=2, max_new_tokens=6, keep_tree=True)
    for prompt in range(2):
        nodes = views.figures.tree_layout(out, lambda ids: [str(i) for i in ids], prompt)
        for rank in range(2):
            row = prompt * 2 + rank
            end = next(n for n in nodes if n["end"] == rank)
            path, node = [], end
            while node is not None:  # back to the root along the parents
                path.append(int(node["text"]))
                node = nodes[node["parent"]] if node["parent"] is not None else None
            length = int(out.new_lengths[row])
            assert path[::-1] == out.new_tokens[row, :length].tolist() and end["fate"] == "finished"
    figure = views.beam_tree_view(out, STRINGS).figure
    assert any(trace.name == "returned path" and trace.line.width == 3 for trace in figure.data)


WINDOW = {"width": 1400, "height": 1000}
INSIDE = """sel => Array.from(document.querySelectorAll(sel)).map(e => e.getBoundingClientRect())
  .filter(r => r.width > 0).map(r => [r.left, r.top, r.right, r.bottom])"""


def inside(page, selector: str) -> list:
    """Each element's box, and whether every one lies inside the window (no scrolling needed)."""
    boxes = page.evaluate(INSIDE, selector)
    return boxes, all(0 <= l and 0 <= t and r <= WINDOW["width"] and b <= WINDOW["height"] for l, t, r, b in boxes)


def test_every_head_of_a_gpt2_shaped_model_and_an_eleven_step_tree_fit_a_1400_by_1000_window(browser, tmp_path):
    model = make(GPT2_SHAPE)
    ids = torch.randint(0, 60, (1, 12), generator=torch.Generator().manual_seed(4))
    trace = analysis.prune_heads(copy.deepcopy(model), {3: [5]}).trace(ids)
    page, seen = open_offline(browser, views.model_view(trace, [f"w{i}" for i in range(12)]).save(tmp_path / "m.html"),
                              viewport=WINDOW)
    boxes, fits = inside(page, "#figure .nsewdrag")  # one drag box a map
    assert len(boxes) == 144 and fits, boxes[-1]
    assert "pruned" in page.inner_text("#figure") and not seen["errors"] and not seen["blocked"]
    page.close()

    out = decoders.beam_search(model, ids, num_beams=4, max_new_tokens=11, keep_tree=True)
    assert len(out.tree.steps) == 11
    page, seen = open_offline(browser, views.beam_tree_view(out, STRINGS).save(tmp_path / "t.html"), viewport=WINDOW)
    points, fits = inside(page, "#figure .scatterlayer .point")
    assert len(points) == sum(step.token.shape[1] for step in out.tree.steps) and fits, points[-1]
    legend, fits = inside(page, "#figure .legend")
    assert legend and fits and "returned path" in page.evaluate("document.querySelector('#figure .legend').textContent")
    assert not seen["errors"] and not seen["blocked"]
    page.close()


def test_the_head_view_of_a_pruned_padded_row_shows_its_real_tokens_and_says_pruned(browser, tmp_path):
    model = analysis.prune_heads(make(SMALL), {1: [2]})
    ids = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0
    real = [f" w{i}" for i in range(4)]
    page, seen = open_offline(browser, views.head_view(model.trace(ids, mask), real, row=1).save(tmp_path / "h.html"),
                              viewport=WINDOW)
    ticks = page.evaluate("Array.from(document.querySelectorAll('#figure .xtick text')).map(t => t.textContent)")
    assert ticks == ["0:␣w0", "1:␣w1", "2:␣w2", "3:␣w3"]  # the real tokens, whitespace visible, no padding
    page.select_option("#layer", "1")
    page.select_option("#head", "2")
    assert "layer 1, head 2: pruned" in page.inner_text("#figure")
    page.select_option("#head", "3")
    assert "layer 1, head 3" in page.inner_text("#figure") and "pruned" not in page.inner_text("#figure")
    assert not seen["errors"] and not seen["blocked"]
    page.close()


def test_a_long_title_says_how_many_tokens_it_leaves_out():
    model = make(SMALL)
    ids = torch.randint(0, 60, (1, 20), generator=torch.Generator().manual_seed(6))
    view = views.model_view(model.trace(ids), [f"w{i}" for i in range(20)])
    assert view.title.endswith("w10 w11 … (20 tokens)")
