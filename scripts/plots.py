"""The pictures the analysis scripts draw, with matplotlib (the optional `plot` extra).

Each function writes one PNG and returns its path. `pyplot()` returns matplotlib's pyplot, or
None when matplotlib is not installed: the scripts then print their tables only, and say so.
"""

from __future__ import annotations

from pathlib import Path

import torch

INSTALL_HINT = 'pictures need matplotlib: pip install -e ".[plot]"'


def pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # draw to files; no window, no display needed
    import matplotlib.pyplot as plt
    return plt


def heatmap(plt, values: torch.Tensor, title: str, colorbar: str, path: Path) -> Path:
    """A (layer, head) table as coloured cells with their numbers; NaN cells (pruned heads) blank."""
    rows, columns = values.shape
    figure, axes = plt.subplots(figsize=(max(5.0, 1.5 + 0.55 * columns), max(3.0, 1.0 + 0.45 * rows)))
    top = float(values.nan_to_num(0).max()) or 1.0
    image = axes.imshow(values.cpu().numpy(), cmap="viridis", aspect="auto", vmin=0, vmax=top)  # both measures are >= 0
    figure.colorbar(image, ax=axes, label=colorbar, format="%.2f")
    axes.set_title(title, fontsize=10)
    axes.set(xlabel="head", ylabel="layer", xticks=range(columns), yticks=range(rows))
    if rows * columns <= 400:  # numbers stay readable up to GPT-2 medium's 24 x 16
        for (layer, head), value in zip(torch.cartesian_prod(torch.arange(rows), torch.arange(columns)).tolist(),
                                        values.flatten().tolist()):
            if value == value:  # not NaN
                axes.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=6,
                          color="white" if value < 0.6 * top else "black")
    return _save(plt, figure, path)


def attention_grid(plt, patterns: list[torch.Tensor], heads: list[list[int]], n_head: int, labels: list[str],
                   path: Path) -> Path:
    """One small attention map per (layer, head): query positions down, key positions across, dark
    where the query attends. Token labels on the outer axes; pruned heads left empty."""
    n_layer, t = len(patterns), len(labels)
    labels = [label.strip() or repr(label) for label in labels]  # a leading space would push the text off the axis
    cell = max(1.2, 0.16 * t)
    figure, grid = plt.subplots(n_layer, n_head, figsize=(cell * n_head + 1.5, cell * n_layer + 1.0), squeeze=False)
    for layer, (pattern, kept) in enumerate(zip(patterns, heads)):  # pattern: (h t s) for one text
        for slot in range(n_head):
            axes = grid[layer][slot]
            axes.set_xticks([])
            axes.set_yticks([])
            if slot in kept:
                axes.imshow(pattern[kept.index(slot)].float().cpu().numpy(), cmap="Blues", vmin=0, vmax=1)
            else:
                axes.set_facecolor("0.9")
            if layer == 0:
                axes.set_title(f"head {slot}", fontsize=8)
            if slot == 0:
                axes.set_ylabel(f"layer {layer}", fontsize=8)
    if t <= 24:  # token labels, where there is room for them
        for slot in range(n_head):
            grid[-1][slot].set_xticks(range(t), labels, rotation=90, fontsize=6)
        for layer in range(n_layer):
            grid[layer][0].set_yticks(range(t), labels, fontsize=6)
    figure.suptitle("attention: each row a query token, each column a key it may look at")
    return _save(plt, figure, path)


def curve(plt, x: list[float], y: list[float], xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(x, y, marker="o")
    axes.ticklabel_format(useOffset=False)  # the loss itself on the axis, not "+1.08e1" and differences
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    return _save(plt, figure, path)


def _save(plt, figure, path: Path) -> Path:
    try:
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        plt.close(figure)
    return path
