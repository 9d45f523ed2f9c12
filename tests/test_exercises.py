"""The course as exercises (notebooks/exercises/course.ipynb), run twice as CI runs it: with the
blanks, every check cell prints its report and names the blank as not written (no traceback);
with each blank filled by the definition of the same name in solutions.py, every check passes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (the test extra)")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (the test extra)")

from minigpt.check import CAUSES  # noqa: E402

HERE = Path(__file__).resolve().parents[1] / "notebooks" / "exercises"
EXERCISES = ["attend", "MyBlock", "greedy", "beam_step", "top_p", "entropy", "importance", "positions"]


def solutions() -> dict[str, str]:
    """Each top-level definition of solutions.py, by name, as source text."""
    text = (HERE / "solutions.py").read_text()
    return {node.name: ast.get_source_segment(text, node) for node in ast.parse(text).body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def run(notebook, tmp_path) -> dict[str, str]:
    """Execute the notebook; what each check cell printed, by the exercise it checks."""
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue")
    return {cell.metadata["checks"]: "".join(o.get("text", "") for o in cell.outputs)
            for cell in notebook.cells if "checks" in cell.metadata}


def course():
    notebook = nbformat.read(HERE / "course.ipynb", as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # kept clean
    assert [cell.metadata["exercise"] for cell in notebook.cells if "exercise" in cell.metadata] == EXERCISES
    return notebook


def test_with_the_blanks_every_check_cell_names_its_blank_as_not_written(tmp_path):
    printed = run(course(), tmp_path)
    assert sorted(printed) == sorted(EXERCISES)
    for name, report in printed.items():
        assert f"diagnosis: {CAUSES['not-written'].says}" in report, (name, report)
        assert "FAIL" in report and "Traceback" not in report


def test_with_the_solutions_filled_in_every_check_passes(tmp_path):
    notebook, solved = course(), solutions()
    assert sorted(solved) == sorted(EXERCISES)
    for cell in notebook.cells:
        if "exercise" in cell.metadata:
            cell.source = solved[cell.metadata["exercise"]]
    for name, report in run(notebook, tmp_path).items():
        assert "every property holds" in report and "FAIL" not in report, (name, report)
