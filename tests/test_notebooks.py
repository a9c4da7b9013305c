"""Both notebooks run top to bottom offline (nbclient, a fresh python3 kernel) and produce their plots."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, plot", [("quickstart.ipynb", "quickstart.png"), ("dsg_kd_walkthrough.ipynb", "dsg_kd.png")]
)
def test_notebook_executes_and_plots(name, plot, tmp_path, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # stored clean
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if out.output_type == "display_data" and "image/png" in out.get("data", {})]
    assert images, "the notebook showed no plot"
    assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(tmp_path / plot) > 10_000
