"""The distribution installs its folders under one namespace and imports nothing generic."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import moe_offload_lab

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("traces", "policies", "sim", "hw")
# a line that imports one of the folders by its bare, generic name
BARE_IMPORT = re.compile(r"^\s*(from|import)\s+(traces|policies|sim|hw)(\.|\s|$)", re.M)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_under_the_namespace() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {"moe_offload_lab"}
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).as_posix().replace("/", ".")
            found.add(f"moe_offload_lab.{rel}")
    assert found == listed


def test_no_source_file_imports_a_bare_folder_name() -> None:
    offenders = []
    for folder in (*FOLDERS, "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for match in BARE_IMPORT.finditer(path.read_text()):
                offenders.append(f"{path.relative_to(ROOT)}: {match.group(0).strip()}")
    assert offenders == []


def test_torch_and_transformers_are_extras_only() -> None:
    project = _pyproject()["project"]
    base = " ".join(project["dependencies"])
    assert "torch" not in base and "transformers" not in base
    assert any(dep.startswith("torch") for dep in project["optional-dependencies"]["hw"])


def test_version_is_the_distribution_version() -> None:
    assert moe_offload_lab.__version__ == _pyproject()["project"]["version"]


# A meta-path finder that makes torch and transformers look uninstalled, then the simulator and
# the trace tools run end to end: what `pip install -e .` without extras gives a user.
_NO_TORCH = """
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ModuleNotFoundError("No module named " + repr(name))
        return None
sys.meta_path.insert(0, _Absent())
from {module} import main
sys.argv = {argv!r}
raise SystemExit(main())
"""


def _run_without_torch(module: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = _NO_TORCH.format(module=module, argv=argv)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def test_simulator_and_trace_tools_run_without_torch(tmp_path: Path) -> None:
    trace = tmp_path / "t.parquet"
    done = _run_without_torch("moe_offload_lab.traces.cli",
                              ["moe-trace", "synth", "--preset", "switch-base-8", "--tokens",
                               "300", "-o", str(trace)], tmp_path)
    assert done.returncode == 0, done.stderr
    done = _run_without_torch("moe_offload_lab.traces.cli",
                              ["moe-trace", "stats", str(trace), "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    done = _run_without_torch("moe_offload_lab.sim.cli",
                              ["moe-sim", "model=switch-base-8", "trace.tokens=300",
                               f"out={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "summary.json").is_file()


def test_learned_policy_without_torch_is_one_line(tmp_path: Path) -> None:
    """The main job runs Prophet and PreScope (learned predictors): without the ``learned``
    extra it stops before any run with one line naming the extra, and writes nothing."""
    done = _run_without_torch("moe_offload_lab.sim.cli",
                              ["moe-sim", "policy=prophet", "trace.tokens=50",
                               f"out={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "moe-sim: error: the learned predictor needs torch, which is not installed: install the "
        "extra, pip install -c constraints.txt -e '.[learned]'"]
    assert not (tmp_path / "run").exists()
