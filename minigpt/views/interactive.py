"""Interactive views as self-contained HTML pages: no network request, no CDN, one file each that
opens in any browser and inline in Jupyter (`_repr_html_`).

    head_view(trace, tokens)                pick a layer and a head; hover a cell: query, key, weight
    model_view(trace, tokens)               every head of every layer at once
    logit_lens_view(lens, tokens, strings)  the next token each layer would predict, and how sure
    choices_view(generation, strings)       each step's chosen token and the alternatives it weighed
    beam_tree_view(generation, strings)     a beam search's tree (keep_tree=True): kept, finished, dropped

The figures are plotly's (its JavaScript is written into each page, so nothing is fetched); the
only script of ours is the head view's two menus, which show one of the layer x head heatmaps.
`strings` is `Tokenizer.token_strings`. Needs the `views` extra (`pip install -e ".[views]"`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots
from torch import Tensor

from ..model import Trace
from .checks import check_row, check_tokens, check_trace_view
from .figures import FATE_COLOURS, TokenStrings, top_tokens, tree_layout


class View:
    """One self-contained HTML page: `save(path)`, or shown inline in Jupyter."""

    def __init__(self, title: str, figure: go.Figure, controls: str = "", script: str = ""):
        self.title = title
        self.html = PAGE.format(title=html.escape(title), plotly=get_plotlyjs(), controls=controls,
                                figure=figure.to_json(), script=script)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        try:
            path.write_text(self.html, encoding="utf-8")
        except OSError as err:
            raise ValueError(f"cannot write {path}: {err.strerror or err}") from None
        return path

    def _repr_html_(self) -> str:
        # in a frame of its own, so that the page's script and styles meet nothing of the notebook's
        return f'<iframe srcdoc="{html.escape(self.html)}" style="width:100%;height:640px;border:0"></iframe>'


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ font-family: sans-serif; margin: 12px; }} label {{ margin-right: 12px; }}</style>
<script>{plotly}</script></head>
<body><h3>{title}</h3><div id="controls">{controls}</div><div id="figure"></div>
<script>
const figure = {figure};
Plotly.newPlot("figure", figure.data, figure.layout, {{displaylogo: false}});
{script}
</script></body></html>
"""


def _labels(tokens: list[str]) -> list[str]:
    """Tokens as axis labels: visible spaces and newlines, and never two alike (plotly merges
    equal category names, so positions are numbered)."""
    return [f"{i}:{token!r}"[:16] for i, token in enumerate(tokens)]


def _pattern_text(tokens: list[str], weights: Tensor) -> list[list[str]]:
    return [[f"query {tokens[q]!r} -> key {tokens[k]!r}: {float(weights[q, k]):.3f}" for k in range(len(tokens))]
            for q in range(len(tokens))]


def head_view(trace: Trace, tokens: list[str], row: int = 0) -> View:
    """One head's attention pattern at a time: pick the layer and the head; hover a cell to read
    which query token looks at which key, and how much."""
    check_trace_view(trace, tokens, row)
    labels, t = _labels(tokens), len(tokens)
    figure = go.Figure()
    heads = [pattern.shape[1] for pattern in trace.attentions]
    for layer, pattern in enumerate(trace.attentions):
        for head in range(heads[layer]):
            weights = pattern[row, head].detach().float().cpu()
            figure.add_trace(go.Heatmap(z=weights.tolist(), x=list(range(t)), y=list(range(t)), colorscale="Blues",
                                        zmin=0, zmax=1, name=f"layer {layer} head {head}",
                                        text=_pattern_text(tokens, weights), hoverinfo="text",
                                        visible=layer == 0 and head == 0))
    figure.update_layout(xaxis=dict(tickvals=list(range(t)), ticktext=labels, title="key (looked at)"),
                         yaxis=dict(tickvals=list(range(t)), ticktext=labels, autorange="reversed", title="query"),
                         height=max(420, 22 * t + 160), width=max(520, 22 * t + 260), title="layer 0, head 0")
    options = lambda n, name: "".join(f'<option value="{i}">{name} {i}</option>' for i in range(n))  # noqa: E731
    controls = (f'<label>layer <select id="layer">{options(len(heads), "layer")}</select></label>'
                f'<label>head <select id="head">{options(max(heads), "head")}</select></label>')
    script = f"""
const heads = {json.dumps(heads)};  // heads per layer (fewer where pruned)
function show() {{
  const layer = +document.getElementById("layer").value;
  const head = Math.min(+document.getElementById("head").value, heads[layer] - 1);
  const first = heads.slice(0, layer).reduce((a, b) => a + b, 0);  // this layer's first trace
  const visible = figure.data.map((_, i) => i === first + head);
  Plotly.update("figure", {{visible: visible}}, {{title: {{text: "layer " + layer + ", head " + head}}}});
}}
document.getElementById("layer").addEventListener("change", show);
document.getElementById("head").addEventListener("change", show);
"""
    return View("attention, one head at a time", figure, controls, script)


def model_view(trace: Trace, tokens: list[str], row: int = 0) -> View:
    """Every head of every layer at once: rows are layers, columns heads; hover for the weights."""
    check_trace_view(trace, tokens, row)
    n_layer, n_head = len(trace.attentions), max(p.shape[1] for p in trace.attentions)
    figure = make_subplots(rows=n_layer, cols=n_head, horizontal_spacing=0.01, vertical_spacing=0.01,
                           row_titles=[f"layer {i}" for i in range(n_layer)],
                           column_titles=[f"head {i}" for i in range(n_head)])
    for layer, pattern in enumerate(trace.attentions):
        for head in range(pattern.shape[1]):
            weights = pattern[row, head].detach().float().cpu()
            figure.add_trace(go.Heatmap(z=weights.tolist(), colorscale="Blues", zmin=0, zmax=1, showscale=False,
                                        text=_pattern_text(tokens, weights), hoverinfo="text"),
                             row=layer + 1, col=head + 1)
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False, autorange="reversed")
    figure.update_layout(height=130 * n_layer + 120, width=130 * n_head + 160,
                         title="attention of every head: rows query tokens, columns keys")
    return View(f"attention, all {n_layer} x {n_head} heads: {' '.join(repr(x) for x in tokens[:12])}", figure)


def logit_lens_view(lens: Tensor, tokens: list[str], token_strings: TokenStrings, row: int = 0) -> View:
    """analysis.logit_lens of one row: for each layer and position the token that layer would
    predict next, coloured by its probability."""
    check_row(row, lens.shape[1])
    check_tokens(tokens, lens.shape[2])
    texts, probs = top_tokens(lens[:, row], token_strings)
    depth, t = probs.shape
    figure = go.Figure(go.Heatmap(z=probs.tolist(), x=list(range(t)), y=list(range(depth)), colorscale="Greens", zmin=0,
                                  zmax=1, text=[[repr(x)[1:-1] for x in layer] for layer in texts],
                                  texttemplate="%{text}", hovertemplate="%{text}: p = %{z:.3f}<extra></extra>"))
    figure.update_layout(xaxis=dict(tickvals=list(range(t)), ticktext=_labels(tokens), title="position (its token)"),
                         yaxis=dict(tickvals=list(range(depth)), ticktext=["embeddings", *(f"block {i}" for i in
                                                                                           range(1, depth))]),
                         height=60 * depth + 200, width=max(600, 70 * t + 200),
                         title="logit lens: the next token each layer would predict")
    return View("logit lens", figure)


def choices_view(generation, token_strings: TokenStrings, row: int = 0) -> View:
    """A generation step by step: the token chosen, then the alternatives the step remembered, each
    coloured by its probability; hover for the probability and the step's entropy."""
    check_row(row, generation.sequences.shape[0])
    steps = int(generation.new_lengths[row])
    chosen = generation.new_tokens[row, :steps].tolist()
    alternatives = generation.alternatives[row, :steps].tolist()
    probs = [[float(p) for p in ps] for ps in generation.alternative_probs[row, :steps].float()]
    chosen_probs = generation.scores[row, :steps].float().exp().tolist()
    entropy = generation.entropy[row, :steps].tolist()
    text = [[repr(token_strings([c])[0])[1:-1]] + [repr(token_strings([i])[0])[1:-1] if i >= 0 else "" for i in alts]
            for c, alts in zip(chosen, alternatives)]
    z = [[c] + ps for c, ps in zip(chosen_probs, probs)]
    hover = [[f"step {s}, entropy {entropy[s]:.2f} nats" for _ in z[s]] for s in range(steps)]
    columns = ["chosen", *(f"#{i + 1}" for i in range(len(z[0]) - 1))] if z else ["chosen"]
    figure = go.Figure(go.Heatmap(z=z, x=columns, y=list(range(steps)), text=text, customdata=hover, colorscale="Oranges",
                                  zmin=0, zmax=1, texttemplate="%{text}",
                                  hovertemplate="%{text}: p = %{z:.3f}<br>%{customdata}<extra></extra>"))
    figure.update_layout(yaxis=dict(autorange="reversed", title="step"), height=28 * steps + 220, width=760,
                         title="choices per step: the chosen token, then the alternatives")
    return View("decoding choices", figure)


def beam_tree_view(generation, token_strings: TokenStrings, prompt: int = 0) -> View:
    """A beam search's tree (keep_tree=True): each column a step, each dot a candidate, a line to the
    beam it extends; blue went on as a beam, green finished, grey dropped. Hover for token and score."""
    nodes = tree_layout(generation, token_strings, prompt)
    edges_x, edges_y = [], []
    for node in nodes:
        if node["parent"] is not None:
            parent = nodes[node["parent"]]
            edges_x += [parent["step"], node["step"], None]
            edges_y += [parent["rank"], node["rank"], None]
    figure = go.Figure(go.Scatter(x=edges_x, y=edges_y, mode="lines", line=dict(color="#ccc", width=1),
                                  hoverinfo="skip", showlegend=False))
    for fate, colour in FATE_COLOURS.items():
        chosen = [n for n in nodes if n["fate"] == fate]
        figure.add_trace(go.Scatter(x=[n["step"] for n in chosen], y=[n["rank"] for n in chosen], mode="markers+text",
                                    marker=dict(color=colour, size=9), name=fate,
                                    text=[repr(n["text"])[1:-1] for n in chosen], textposition="middle right",
                                    customdata=[f"{n['score']:.2f}" for n in chosen],
                                    hovertemplate="%{text}: running score %{customdata}<extra></extra>"))
    figure.update_layout(xaxis=dict(title="step", dtick=1), yaxis=dict(title="candidate (best first)",
                                                                      autorange="reversed"),
                         height=26 * (max(n["rank"] for n in nodes) + 1) + 220, width=max(700, 150 * len(
                             generation.tree.steps) + 200), title="beam search: every candidate of every step")
    return View("beam-search tree", figure)
