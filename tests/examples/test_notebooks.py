"""Every notebook in examples/notebooks is committed without outputs and runs top to bottom.

Each runs in a fresh kernel from this environment (nbclient), with its parameters cell overridden
papermill-style: the test model, 2 diffusion steps, a temporary session folder, one torch thread.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

NOTEBOOKS = sorted(p.name for p in (EXAMPLES / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name: str) -> None:
    book = nbformat.read(EXAMPLES / "notebooks" / name, as_version=4)
    nbformat.validate(book)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), (
        "clear the outputs before committing"
    )
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str, model_arg: str, tmp_path: Path) -> None:
    folder = EXAMPLES / "notebooks"
    book = nbformat.read(folder / name, as_version=4)
    at = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    # Enough diffusion steps for pictures the model can read back: captions come from the outputs,
    # and later turns find "the star" by its caption.
    override = (
        f"MODEL = {model_arg!r}\nSTEPS = 8\nROOT = {str(tmp_path)!r}\nimport torch\ntorch.set_num_threads(1)"
    )
    book.cells.insert(at + 1, new_code_cell(override))
    client = NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
