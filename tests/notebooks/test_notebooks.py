"""Every notebook in ``notebooks/`` runs top to bottom on small data and writes its figures.

Each notebook runs with nbclient in a fresh kernel whose working directory is a temporary folder.
The kernel is this interpreter: a ``python3`` kernel spec pointing at ``sys.executable`` is
written into a temporary ``JUPYTER_PATH`` for the test (never into a global Jupyter folder), and
a last cell added to the notebook checks that the kernel really runs it. Nothing here depends
on wall time: cells have no timeout, and no notebook asserts on a measured duration.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# notebook -> PNG files (relative to its working directory) it must write
FIGURES = {
    "trace_analysis": ["figures/entropy.png", "figures/mutual_information.png",
                       "figures/skew.png", "figures/reuse.png"],
    "policy_comparison": ["comparison/report/speedup.png", "comparison/report/breakdown.png",
                          "cache-sweep/report/hit_ratio.png",
                          "cache-sweep/report/step_latency.png",
                          "cache-sweep/report/timeline.png", "cache-sweep/report/pareto.png"],
    "tuning_study": ["tuning-report/pareto/pareto.png", "tuning-report/single/history.png",
                     "tuning-report/single/policies.png"],
    "sim_vs_hardware": ["figures/sim_vs_hw.png", "validation/validation.png"],
}


@pytest.fixture
def kernel_here(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ``python3`` kernel spec for this interpreter, first on a temporary JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test)", "language": "python"}), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return "python3"


def test_every_notebook_is_tested_and_stored_without_outputs() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)
    for name in FIGURES:
        book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(book)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code)
        text = (NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8")
        assert str(NOTEBOOKS.parent) not in text  # no absolute path of the checkout


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs(name: str, tmp_path: Path, kernel_here: str) -> None:
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    book.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    # No wall-clock limit on cells (timeout=None): a loaded machine only makes them slower. The
    # kernel's start-up wait and the wait for a cell's last output after its reply (nbclient's
    # iopub_timeout, 4 s by default, after which it drops the output silently) are hang guards,
    # far beyond any delay on a busy machine; they cost nothing when messages arrive.
    client = NotebookClient(book, kernel_name=kernel_here, timeout=None, startup_timeout=3600,
                            iopub_timeout=600, raise_on_iopub_timeout=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    printed = "".join(o.get("text", "") for o in book.cells[-1].outputs)
    assert printed.strip() == sys.prefix  # the kernel runs in this environment
    for figure in FIGURES[name]:
        data = (tmp_path / figure).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, figure
