"""The course's pictures as matplotlib figures, one call each on what the library returns.

    attention_maps(trace, tokens)              every head of every layer; layer= one layer; layer= head= one head
    head_heatmap(values, title, label)         a (layer, head) table: attention entropy, head importance
    logit_lens(lens, tokens, token_strings)    what each layer would predict at each position
    choices(generation, token_strings)         a generation step by step: the token chosen, its alternatives
    pruning_curve(curve, total_heads)          the loss as heads are pruned (analysis.prune_by_importance)
    experiment_curves(results)                 held-out bits per byte as each variant trains, mean and seed band
    beam_tree(generation, token_strings)       a beam search's tree (keep_tree=True): kept, finished, dropped

Each returns a `matplotlib.figure.Figure`: `figure.savefig("x.png")`, or shown inline in Jupyter.
`token_strings` is `Tokenizer.token_strings`; `tokens` a list of strings, one per position.
Needs the `views` extra (`pip install -e ".[views]"`).
"""

from __future__ import annotations

from typing import Callable

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..analysis.pruning import PruningCurve
from ..checks import check_int, check_mask
from ..model import Trace
from ..training.compare import by_variant
from .checks import check_generation, check_lens, check_row, pruned, real_row, shown, trace_row

TokenStrings = Callable[[list[int]], list[str]]


def attention_maps(trace: Trace, tokens: list[str], row: int = 0, layer: int | None = None,
                   head: int | None = None) -> Figure:
    """Attention patterns of one row of a trace: each map's rows are queries, its columns the keys
    they may look at, dark where a query looks. All heads of all layers, of one layer, or one head,
    under their original numbers (a pruned head's cell grey, titled so); a padded row over its real
    tokens only."""
    maps, tokens = trace_row(trace, tokens, row)  # n_layer of (h t t)
    if layer is not None:
        check_int("layer", layer, 0, len(maps) - 1)
    if head is not None:
        check_int("head", head, 0, maps[0].shape[0] - 1)
    layers = range(len(maps)) if layer is None else [layer]
    heads = range(maps[0].shape[0]) if head is None else [head]
    rows, columns, t = len(layers), len(heads), len(tokens)
    size = max(1.4, 0.18 * t) if rows * columns > 1 else max(4.0, 0.3 * t)
    figure = Figure(figsize=(size * columns + 1.5, size * rows + 1.0))
    grid = figure.subplots(rows, columns, squeeze=False)
    labels = [shown(token, 10) for token in tokens]
    for (i, l), (j, h) in ((a, b) for a in enumerate(layers) for b in enumerate(heads)):
        axes, weights = grid[i][j], maps[l][h]
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_facecolor("0.92")  # a pruned head's cell stays grey
        axes.imshow(weights.numpy(), cmap="Blues", vmin=0, vmax=1)
        axes.set_title(f"layer {l} head {h}" + (" (pruned)" if pruned(weights) else ""), fontsize=8)
        if t <= 24 or rows * columns == 1:  # token labels, where there is room for them
            small = 6 if rows * columns > 1 else 8
            axes.set_xticks(range(t), labels, rotation=90, fontsize=small)
            axes.set_yticks(range(t), labels, fontsize=small)
    figure.suptitle("attention: each row a query token, each column a key it may look at")
    figure.tight_layout()
    return figure


def head_heatmap(values: Tensor, title: str, label: str) -> Figure:
    """A (layer, head) table as coloured cells with their numbers; NaN cells (pruned heads) blank."""
    if not isinstance(values, Tensor) or values.dim() != 2:
        raise ValueError(f"values must be a (layer, head) tensor (attention_entropy, head_importance), got "
                         f"{type(values).__name__}{'' if not isinstance(values, Tensor) else f' of shape {tuple(values.shape)}'}")
    rows, columns = values.shape
    figure = Figure(figsize=(max(5.0, 1.5 + 0.55 * columns), max(3.0, 1.0 + 0.45 * rows)))
    axes = figure.subplots()
    top = float(values.nan_to_num(0).max()) or 1.0
    image = axes.imshow(values.detach().cpu().numpy(), cmap="viridis", aspect="auto", vmin=0, vmax=top)
    figure.colorbar(image, ax=axes, label=label, format="%.2f")
    axes.set_title(title, fontsize=10)
    axes.set(xlabel="head", ylabel="layer", xticks=range(columns), yticks=range(rows))
    if rows * columns <= 400:  # numbers stay readable up to GPT-2 medium's 24 x 16
        for (layer, head), value in zip(torch.cartesian_prod(torch.arange(rows), torch.arange(columns)).tolist(),
                                        values.flatten().tolist()):
            if value == value:  # not NaN
                axes.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=6,
                          color="white" if value < 0.6 * top else "black")
    figure.tight_layout()
    return figure


def top_tokens(logits: Tensor, token_strings: TokenStrings) -> tuple[list[list[str]], Tensor]:
    """(... v) logits -> the likeliest token's text at each place, and its probability (...)."""
    probs, ids = logits.detach().float().softmax(dim=-1).max(dim=-1)
    texts = [token_strings(row) for row in ids.reshape(-1, ids.shape[-1]).tolist()]
    return texts, probs


def lens_row(lens: Tensor, tokens: object, token_strings: TokenStrings, row: object,
             attention_mask: Tensor | None) -> tuple[list[list[str]], Tensor, list[str]]:
    """One row of analysis.logit_lens (l+1 b t v) over its real positions (attention_mask (b t),
    or all): each layer's likeliest next token's text and probability (l+1 t'), and the labels."""
    depth, batch, positions = check_lens(lens).shape[:3]
    real = None if attention_mask is None else check_mask("attention_mask", attention_mask, (batch, positions))
    row, keep, tokens = real_row(real, tokens, row, batch, positions)
    texts, probs = top_tokens(lens[:, row, keep.to(lens.device)], token_strings)  # (l+1) lists of t', (l+1 t')
    return texts, probs.cpu(), tokens


def logit_lens(lens: Tensor, tokens: list[str], token_strings: TokenStrings, row: int = 0,
               attention_mask: Tensor | None = None) -> Figure:
    """analysis.logit_lens (l+1 b t v) of one row: for each layer (rows) and position (columns), the
    token that layer would predict next, coloured by its probability. With the batch's
    attention_mask, a padded row is drawn over its real tokens only."""
    texts, probs, tokens = lens_row(lens, tokens, token_strings, row, attention_mask)
    depth, t = probs.shape
    figure = Figure(figsize=(max(6.0, 0.9 * t + 2), max(3.0, 0.4 * depth + 1.5)))
    axes = figure.subplots()
    image = axes.imshow(probs.numpy(), cmap="Greens", aspect="auto", vmin=0, vmax=1)
    for layer in range(depth):
        for position in range(t):
            axes.text(position, layer, shown(texts[layer][position], 8), ha="center", va="center", fontsize=7,
                      color="white" if float(probs[layer, position]) > 0.6 else "black")
    axes.set_xticks(range(t), [shown(token, 12) for token in tokens], rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(depth), ["embeddings", *(f"block {i}" for i in range(1, depth))], fontsize=8)
    axes.set_title("logit lens: the next token each layer would predict (colour: its probability)", fontsize=10)
    figure.colorbar(image, ax=axes, label="probability")
    figure.tight_layout()
    return figure


def choices(generation, token_strings: TokenStrings, row: int = 0) -> Figure:
    """A Generation's choice table as a picture: one line per step, the chosen token first, then the
    alternatives the step remembered, each coloured by its probability; the entropy on the right."""
    check_row(row, check_generation(generation).sequences.shape[0])
    steps = int(generation.new_lengths[row])
    chosen = generation.new_tokens[row, :steps].tolist()
    alternatives = generation.alternatives[row, :steps]  # (new a)
    probs = generation.alternative_probs[row, :steps].float()
    figure = Figure(figsize=(2 + 1.3 * (alternatives.shape[1] + 1), max(2.5, 0.35 * steps + 1.2)))
    axes = figure.subplots()
    cells = torch.cat([generation.scores[row, :steps].exp()[:, None].float(), probs], dim=1)  # (new 1+a)
    axes.imshow(cells.cpu().numpy(), cmap="Oranges", aspect="auto", vmin=0, vmax=1)
    for step in range(steps):
        names = token_strings([chosen[step]]) + [token_strings([i])[0] if i >= 0 else "" for i in alternatives[step].tolist()]
        for column, name in enumerate(names):
            axes.text(column, step, shown(name, 10), ha="center", va="center", fontsize=7,
                      weight="bold" if column == 0 else "normal")
        axes.text(len(names) - 0.4, step, f"H={float(generation.entropy[row, step]):.2f}", va="center", fontsize=7)
    axes.set_xticks(range(cells.shape[1]), ["chosen", *(f"#{i + 1}" for i in range(alternatives.shape[1]))], fontsize=8)
    axes.set_yticks(range(steps), [str(step) for step in range(steps)], fontsize=7)
    axes.set(ylabel="step", title="choices per step (colour: probability; H: entropy in nats)")
    figure.tight_layout()
    return figure


def pruning_curve(curve: PruningCurve, total_heads: int) -> Figure:
    """The loss after each round of analysis.prune_by_importance, against the share of heads pruned."""
    if not isinstance(curve, PruningCurve):
        raise ValueError(f"curve must be what analysis.prune_by_importance returns, got {type(curve).__name__}")
    check_int("total_heads", total_heads, 1)
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot([100 * n / total_heads for n, _ in curve.points], [loss for _, loss in curve.points], marker="o")
    axes.ticklabel_format(useOffset=False)  # the loss itself on the axis, not "+1.08e1" and differences
    axes.set(xlabel="heads pruned (%)", ylabel="loss (nats per token)", title="loss as the least important heads go")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def experiment_curves(results: list[dict]) -> Figure:
    """Each variant's held-out bits per byte against training tokens (training.experiment's results):
    the mean over its seeds as a line, the lowest to the highest seed as a band around it."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for name, runs in by_variant(results).items():
        tokens = [point["tokens"] for point in runs[0]["curve"]]
        scores = torch.tensor([[point["bits_per_byte"] for point in run["curve"]] for run in runs])  # (seeds evaluations)
        line = axes.plot(tokens, scores.mean(0), marker="o", markersize=3, label=f"{name} ({len(runs)} seeds)")[0]
        axes.fill_between(tokens, scores.min(0).values, scores.max(0).values, color=line.get_color(), alpha=0.2)
    axes.set(xlabel="training tokens", ylabel="held-out bits per byte", title="held-out loss as each variant trains")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


FATE_COLOURS = {"kept": "#1f77b4", "finished": "#2ca02c", "dropped": "#bfbfbf"}  # blue, green, grey
RETURNED = "#d62728"  # red: the paths of the sequences beam search returned


def tree_layout(generation, token_strings: TokenStrings, prompt: int = 0) -> list[dict]:
    """The nodes of one prompt's beam tree: step, rank among the step's candidates, token text,
    running score, fate ("kept", "finished", "dropped"), the index of the parent node, `returned`
    (the best returned sequence whose path runs through it, 0 the best; None) and `end` (the
    returned sequence that ends there; None)."""
    tree = check_generation(generation).tree
    if tree is None:
        raise ValueError("this Generation keeps no tree: run beam_search(..., keep_tree=True)")
    prompts = tree.steps[0].token.shape[0]
    check_row(prompt, prompts, "prompt")
    nodes: list[dict] = []
    first: list[int] = []  # the node index of each step's candidate 0
    beam_node: dict[int, int] = {}  # beam j of the step before -> its node
    for step, candidates in enumerate(tree.steps):
        first.append(len(nodes))
        next_beam_node = {}
        for rank in range(candidates.token.shape[1]):
            fate = int(candidates.fate[prompt, rank])
            nodes.append({"step": step, "rank": rank, "text": token_strings([int(candidates.token[prompt, rank])])[0],
                          "score": float(candidates.score[prompt, rank]),
                          "fate": "kept" if fate >= 0 else "finished" if fate == -1 else "dropped",
                          "parent": beam_node.get(int(candidates.parent[prompt, rank])), "returned": None, "end": None})
            if fate >= 0:
                next_beam_node[fate] = len(nodes) - 1
        beam_node = next_beam_node
    count = generation.paths.shape[0] // prompts  # returned sequences a prompt, best first
    for returned in reversed(range(count)):  # the best last, so that it names a node two paths share
        path = [c for c in generation.paths[prompt * count + returned].tolist() if c >= 0]
        for step, candidate in enumerate(path):
            nodes[first[step] + candidate]["returned"] = returned
        if path:
            nodes[first[len(path) - 1] + path[-1]]["end"] = returned
    return nodes


def beam_tree(generation, token_strings: TokenStrings, prompt: int = 0) -> Figure:
    """A beam search's tree (keep_tree=True) for one prompt: each column a step, each dot a
    candidate (its token beside it), a line to the beam it extends; blue went on, green finished,
    grey dropped; the returned sequences' paths thick and red, each end marked with its rank."""
    nodes = tree_layout(generation, token_strings, prompt)
    steps = max(n["step"] for n in nodes) + 1
    per_step = max(n["rank"] for n in nodes) + 1
    figure = Figure(figsize=(max(6.0, 1.6 * steps + 1), max(3.0, 0.35 * per_step + 1)))
    axes = figure.subplots()
    for node in nodes:
        if node["parent"] is not None:
            parent, returned = nodes[node["parent"]], node["returned"] is not None
            axes.plot([parent["step"], node["step"]], [parent["rank"], node["rank"]], zorder=2 if returned else 1,
                      color=RETURNED if returned else "0.8", linewidth=2.2 if returned else 0.8)
    for node in nodes:
        axes.scatter(node["step"], node["rank"], color=FATE_COLOURS[node["fate"]], s=18, zorder=3)
        end = f" ← #{node['end']}" if node["end"] is not None else ""
        axes.text(node["step"] + 0.06, node["rank"], f"{shown(node['text'], 10)} {node['score']:.1f}{end}", fontsize=6,
                  va="center", color="black" if node["fate"] != "dropped" else "0.55")
    axes.invert_yaxis()
    axes.set(xlabel="step", ylabel="candidate (best first)", xticks=range(steps),
             title="beam search: blue went on, green finished, grey dropped; red: the returned paths")
    figure.tight_layout()
    return figure
