"""The course notebooks (notebooks/*.ipynb) run from top to bottom on the model in the box, offline,
each in a fresh kernel and a directory that is not the repository's. Each cell holds its own
checks (allclose, equal): a cell that raises fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (the test extra)")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (the test extra)")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_the_four_parts_of_the_course():
    assert [p.stem for p in NOTEBOOKS] == ["1-decoding", "2-attention", "3-by-hand", "4-experiments"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_notebook_runs_from_top_to_bottom(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # kept clean
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                            ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "False" not in printed  # every "equals ...:" check printed True
    if "views.figures" in path.read_text(encoding="utf-8"):  # its pictures are drawn
        pictures = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
        assert any("image/png" in o.get("data", {}) for o in pictures)
