"""The pictures and the interactive views, on the model in the box. The views are opened in a real
browser (Debian's chromium, driven by Playwright) with every request but the page's own file
blocked: each must draw its tokens, the head view must change what it draws when another layer
or head is chosen, and the console must show no error."""

from __future__ import annotations

import pytest
import torch

import decoders
from minigpt import analysis, views
from minigpt.views.browser import open_offline
from weights import SHAKESPEARE, load_gpt2, load_tokenizer

TEXT = "ROMEO:\nWhat light through yonder window breaks?"


@pytest.fixture(scope="module")
def shown():
    """The model in the box, a trace of TEXT, a greedy generation and a beam search with its tree."""
    model, tok = load_gpt2(SHAKESPEARE), load_tokenizer(SHAKESPEARE)
    ids = torch.tensor([tok.encode(TEXT)])
    beams = decoders.beam_search(model, ids, num_beams=3, max_new_tokens=5, keep_tree=True)
    return dict(model=model, tok=tok, ids=ids, trace=model.trace(ids), tokens=tok.token_strings(ids[0]),
                greedy=decoders.greedy(model, ids, max_new_tokens=8), beams=beams)


def every_view(s) -> dict[str, views.View]:
    lens = analysis.logit_lens(s["model"], s["ids"])
    return {"head": views.head_view(s["trace"], s["tokens"]), "model": views.model_view(s["trace"], s["tokens"]),
            "lens": views.logit_lens_view(lens, s["tokens"], s["tok"].token_strings),
            "choices": views.choices_view(s["greedy"], s["tok"].token_strings),
            "tree": views.beam_tree_view(s["beams"], s["tok"].token_strings)}


def test_every_figure_is_drawn_from_what_the_library_returns(shown, tmp_path):
    s, f = shown, views.figures
    curve = analysis.prune_by_importance(load_gpt2(SHAKESPEARE), [(s["ids"], None)], fraction=0.25, rounds=2)
    figures = {
        "all heads": f.attention_maps(s["trace"], s["tokens"]),
        "one layer": f.attention_maps(s["trace"], s["tokens"], layer=1),
        "one head": f.attention_maps(s["trace"], s["tokens"], layer=1, head=2),
        "entropy": f.head_heatmap(analysis.attention_entropy(s["model"], s["ids"]), "entropy", "nats"),
        "lens": f.logit_lens(analysis.logit_lens(s["model"], s["ids"]), s["tokens"], s["tok"].token_strings),
        "choices": f.choices(s["greedy"], s["tok"].token_strings),
        "pruning": f.pruning_curve(curve, 16),
        "tree": f.beam_tree(s["beams"], s["tok"].token_strings),
    }
    assert len(figures["all heads"].axes) == 16 and len(figures["one layer"].axes) == 4
    for name, figure in figures.items():
        path = tmp_path / f"{name}.png"
        figure.savefig(path, dpi=60)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 3000, name
    with pytest.raises(ValueError, match="keep_tree=True"):
        f.beam_tree(s["greedy"], s["tok"].token_strings)


def test_a_view_is_one_file_with_no_address_outside_it(shown):
    from plotly.offline import get_plotlyjs

    bundle = get_plotlyjs()
    for name, view in every_view(shown).items():
        page = view.html
        assert page.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in page, name
        # plotly's bundle mentions URLs in its code; the page adds no script or link to fetch (the
        # browser test below blocks every request to be sure)
        assert page.count("<script src") == bundle.count("<script src") and "<link" not in page, name
        assert view._repr_html_().startswith("<iframe srcdoc=")


def test_every_view_renders_its_tokens_offline_without_errors(shown, browser, tmp_path):
    expected = {"head": "4:␣light", "model": "head 3", "lens": "ROMEO", "choices": "chosen", "tree": "dropped"}
    for name, view in every_view(shown).items():
        page, seen = open_offline(browser, view.save(tmp_path / f"{name}.html"))
        drawn = page.inner_text("#figure")
        assert expected[name] in drawn, (name, drawn[:300])
        assert not seen["errors"] and not seen["blocked"], (name, seen)
        page.close()


def test_choosing_another_layer_and_head_changes_what_the_head_view_draws(shown, browser, tmp_path):
    page, seen = open_offline(browser, every_view(shown)["head"].save(tmp_path / "head.html"))
    shown_trace = "document.getElementById('figure').data.findIndex(t => t.visible === true)"
    cells = "Array.from(document.querySelectorAll('#figure .hm image, #figure .heatmaplayer image')).map(i => i.href.baseVal).join()"
    assert page.evaluate(shown_trace) == 0
    before = page.evaluate(cells)
    page.select_option("#layer", "2")
    page.select_option("#head", "3")
    assert page.evaluate(shown_trace) == 2 * 4 + 3  # layer 2's head 3: the 12th heatmap
    assert "layer 2, head 3" in page.inner_text("#figure")
    assert page.evaluate(cells) != before  # the picture itself changed
    assert not seen["errors"] and not seen["blocked"]
    page.close()
