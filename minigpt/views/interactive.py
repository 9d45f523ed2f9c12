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
import os
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots
from torch import Tensor

from ..model import Trace
from .checks import check_generation, check_row, pruned, shown, trace_row
from .figures import FATE_COLOURS, TokenStrings, lens_row, tree_layout


class View:
    """One self-contained HTML page: `save(path)`, or shown inline in Jupyter."""

    def __init__(self, title: str, figure: go.Figure, controls: str = "", script: str = ""):
        self.title, self.figure = title, figure  # the plotly figure, for figure.show() or a look at its data
        self.html = PAGE.format(title=html.escape(title), plotly=get_plotlyjs(), controls=controls,
                                figure=figure.to_json(), script=script)

    def save(self, path: str | Path) -> Path:
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"save takes a file path, got {type(path).__name__}")
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


WINDOW = (1400, 1000)  # the browser window every view fits at GPT-2's shape (12 layers x 12 heads, 11 steps)


def _labels(tokens: list[str]) -> list[str]:
    """Tokens as axis labels: whitespace made visible, and never two alike (plotly merges equal
    category names, so positions are numbered)."""
    return [f"{i}:{shown(token, 12)}" for i, token in enumerate(tokens)]


def _pattern_text(tokens: list[str], weights: Tensor) -> list[list[str]]:
    return [[f"query {shown(tokens[q])} -> key {shown(tokens[k])}: {float(weights[q, k]):.3f}" for k in range(len(tokens))]
            for q in range(len(tokens))]


def _head_name(layer: int, head: int, weights: Tensor) -> str:
    return f"layer {layer}, head {head}" + (": pruned (analysis.prune_heads)" if pruned(weights) else "")


def head_view(trace: Trace, tokens: list[str], row: int = 0) -> View:
    """One head's attention pattern at a time: pick the layer and the head; hover a cell to read
    which query token looks at which key, and how much. Heads keep their original numbers (a
    pruned head is shown as pruned); a padded row is drawn over its real tokens only."""
    maps, tokens = trace_row(trace, tokens, row)  # n_layer of (h t t)
    labels, t, n_head = _labels(tokens), len(tokens), maps[0].shape[0]
    figure = go.Figure()
    names = [_head_name(layer, head, weights) for layer, heads in enumerate(maps) for head, weights in enumerate(heads)]
    for layer, heads in enumerate(maps):
        for head, weights in enumerate(heads):
            figure.add_trace(go.Heatmap(z=weights.tolist(), x=list(range(t)), y=list(range(t)), colorscale="Blues",
                                        zmin=0, zmax=1, name=f"layer {layer} head {head}",
                                        text=_pattern_text(tokens, weights), hoverinfo="text",
                                        visible=layer == 0 and head == 0))
    figure.update_layout(xaxis=dict(tickvals=list(range(t)), ticktext=labels, title="key (looked at)"),
                         yaxis=dict(tickvals=list(range(t)), ticktext=labels, autorange="reversed", title="query"),
                         height=max(420, 22 * t + 160), width=max(520, 22 * t + 260), title=names[0])
    options = lambda n, name: "".join(f'<option value="{i}">{name} {i}</option>' for i in range(n))  # noqa: E731
    controls = (f'<label>layer <select id="layer">{options(len(maps), "layer")}</select></label>'
                f'<label>head <select id="head">{options(n_head, "head")}</select></label>')
    script = f"""
const names = {json.dumps(names)};  // layer by layer, every head under its original number
function show() {{
  const shown = +document.getElementById("layer").value * {n_head} + +document.getElementById("head").value;
  Plotly.update("figure", {{visible: figure.data.map((_, i) => i === shown)}}, {{title: {{text: names[shown]}}}});
}}
document.getElementById("layer").addEventListener("change", show);
document.getElementById("head").addEventListener("change", show);
"""
    return View("attention, one head at a time", figure, controls, script)


def model_view(trace: Trace, tokens: list[str], row: int = 0) -> View:
    """Every head of every layer at once: rows are layers, columns heads (original numbers, a pruned
    head marked); hover for the weights. Small multiples: at GPT-2's 12 x 12 every map fits a
    1400 x 1000 window; deeper models scroll."""
    maps, tokens = trace_row(trace, tokens, row)
    n_layer, n_head = len(maps), maps[0].shape[0]
    cell = max(40, min(130, (WINDOW[1] - 240) // n_layer, (WINDOW[0] - 240) // n_head))  # pixels a map
    figure = make_subplots(rows=n_layer, cols=n_head, horizontal_spacing=0.01, vertical_spacing=0.01,
                           row_titles=[f"layer {i}" for i in range(n_layer)],
                           column_titles=[f"head {i}" for i in range(n_head)])
    for layer, heads in enumerate(maps):
        for head, weights in enumerate(heads):
            figure.add_trace(go.Heatmap(z=weights.tolist(), colorscale="Blues", zmin=0, zmax=1, showscale=False,
                                        text=_pattern_text(tokens, weights), hoverinfo="text"),
                             row=layer + 1, col=head + 1)
            if pruned(weights):
                figure.add_annotation(text="pruned", x=0.5, y=0.5, xref="x domain", yref="y domain", showarrow=False,
                                      font=dict(color="#888"), row=layer + 1, col=head + 1)
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False, autorange="reversed")
    figure.update_layout(height=cell * n_layer + 100, width=cell * n_head + 120, margin=dict(l=20, r=60, t=70, b=20),
                         title="attention of every head: rows query tokens, columns keys")
    words = " ".join(shown(x) for x in tokens[:12]) + (f" … ({len(tokens)} tokens)" if len(tokens) > 12 else "")
    return View(f"attention, all {n_layer} x {n_head} heads: {words}", figure)


def logit_lens_view(lens: Tensor, tokens: list[str], token_strings: TokenStrings, row: int = 0,
                    attention_mask: Tensor | None = None) -> View:
    """analysis.logit_lens of one row: for each layer and position the token that layer would
    predict next, coloured by its probability. With the batch's attention_mask, a padded row is
    drawn over its real tokens only."""
    texts, probs, tokens = lens_row(lens, tokens, token_strings, row, attention_mask)
    depth, t = probs.shape
    figure = go.Figure(go.Heatmap(z=probs.tolist(), x=list(range(t)), y=list(range(depth)), colorscale="Greens", zmin=0,
                                  zmax=1, text=[[shown(x, 10) for x in layer] for layer in texts],
                                  texttemplate="%{text}", hovertemplate="%{text}: p = %{z:.3f}<extra></extra>"))
    figure.update_layout(xaxis=dict(tickvals=list(range(t)), ticktext=_labels(tokens), title="position (its token)"),
                         yaxis=dict(tickvals=list(range(depth)), ticktext=["embeddings", *(f"block {i}" for i in
                                                                                           range(1, depth))]),
                         height=min(60 * depth + 200, WINDOW[1] - 80), width=max(600, 70 * t + 200),
                         title="logit lens: the next token each layer would predict")
    return View("logit lens", figure)


def choices_view(generation, token_strings: TokenStrings, row: int = 0) -> View:
    """A generation step by step: the token chosen, then the alternatives the step remembered, each
    coloured by its probability; hover for the probability and the step's entropy."""
    check_row(row, check_generation(generation).sequences.shape[0])
    steps = int(generation.new_lengths[row])
    chosen = generation.new_tokens[row, :steps].tolist()
    alternatives = generation.alternatives[row, :steps].tolist()
    probs = [[float(p) for p in ps] for ps in generation.alternative_probs[row, :steps].float()]
    chosen_probs = generation.scores[row, :steps].float().exp().tolist()
    entropy = generation.entropy[row, :steps].tolist()
    text = [[shown(token_strings([c])[0], 12)] + [shown(token_strings([i])[0], 12) if i >= 0 else "" for i in alts]
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
    beam it extends; blue went on as a beam, green finished, grey dropped; the paths of the returned
    sequences drawn thick in red, each end marked with its rank. Hover for token and score. Up to
    15 steps fit a 1400 px window; longer searches scroll."""
    nodes = tree_layout(generation, token_strings, prompt)
    steps = max(n["step"] for n in nodes) + 1
    figure = go.Figure()
    for returned in (False, True):  # the returned paths over the rest
        edges_x, edges_y = [], []
        for node in nodes:
            if node["parent"] is not None and (node["returned"] is not None) == returned:
                parent = nodes[node["parent"]]
                edges_x += [parent["step"], node["step"], None]
                edges_y += [parent["rank"], node["rank"], None]
        figure.add_trace(go.Scatter(x=edges_x, y=edges_y, mode="lines", hoverinfo="skip",
                                    line=dict(color="#d62728", width=3) if returned else dict(color="#ccc", width=1),
                                    name="returned path", showlegend=returned))
    for fate, colour in FATE_COLOURS.items():
        chosen = [n for n in nodes if n["fate"] == fate]
        figure.add_trace(go.Scatter(x=[n["step"] for n in chosen], y=[n["rank"] for n in chosen], mode="markers+text",
                                    marker=dict(color=colour, size=9), name=fate,
                                    text=[shown(n["text"], 12) + (f" ← #{n['end']}" if n["end"] is not None else "")
                                          for n in chosen], textposition="middle right",
                                    customdata=[f"{n['score']:.2f}" for n in chosen],
                                    hovertemplate="%{text}: running score %{customdata}<extra></extra>"))
    figure.update_layout(xaxis=dict(title="step", dtick=1, range=[-0.3, steps - 0.1]),  # room for the last labels
                         yaxis=dict(title="candidate (best first)", autorange="reversed"),
                         legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom"), margin=dict(l=60, r=20, t=90, b=50),
                         height=min(26 * (max(n["rank"] for n in nodes) + 1) + 220, WINDOW[1] - 80),
                         width=max(700, 80 * steps + 160),
                         title="beam search: every candidate of every step; red: the returned sequences' paths")
    return View("beam-search tree", figure)
