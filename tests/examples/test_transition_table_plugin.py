"""The out-of-tree example policy (examples/transition-table) runs everywhere a policy runs.

The example's predictor is imported by each process that builds the policy: the joblib workers
of a ``moe-sim --multirun``, the worker processes of ``moe-tune run --workers 2`` and the
``moe-hw run`` executor (its CPU twin). Two ways to make it importable are exercised: its folder
on PYTHONPATH (a user's own folder, named by ``_target_``), and an offline ``pip install
--target`` of the package, found through its entry point (``name: transition-table``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "transition-table"
POLICY = EXAMPLE / "conf" / "policy" / "transition-table.yaml"
POLICY_EP = EXAMPLE / "conf" / "policy" / "transition-table-ep.yaml"


def _run(module: str, args: list[str], pythonpath: Path | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_multirun_workers_import_the_plugin(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = _run("moe_offload_lab.sim.cli",
                ["--multirun", f"policy={POLICY.relative_to(ROOT)},lru", "trace.tokens=400",
                 "hydra.launcher.n_jobs=2", f"out={sweep}"], EXAMPLE)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(sweep / "sweep.csv")
    assert table["error"].isna().all() and sorted(table["policy"]) == ["lru", "transition-table"]
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["policy"] == "transition-table" and summary["prefetch_copies"] > 0
    assert summary["prefetch_precision"] > 0  # the predictor's prefetches get used


def test_unimportable_target_is_one_line_and_status_2(tmp_path: Path) -> None:
    done = _run("moe_offload_lab.sim.cli", [f"policy={POLICY}", "trace.tokens=50",
                                            f"out={tmp_path}"], None)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "moe-sim: error: predictor _target_ 'transition_table.TransitionTablePredictor' does "
        "not import: no module named 'transition_table' (install its package, or put the "
        "folder holding it on PYTHONPATH)"]


def test_tune_workers_import_the_plugin(tmp_path: Path) -> None:
    space = yaml.safe_load((EXAMPLE / "tune.yaml").read_text())
    space["base"] = [b if not b.startswith("trace.tokens=") else "trace.tokens=300"
                     for b in space["base"]]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    done = _run("moe_offload_lab.sim.tune.cli",
                ["run", str(tmp_path / "space.yaml"), "--study-from-space", "--trials", "2",
                 "--workers", "2",
                 "--out", str(tmp_path / "tune"), "--no-progress"], EXAMPLE)
    assert done.returncode == 0, done.stderr
    assert "finished trials" in done.stdout and "policy.predictor.decay=" in done.stdout
    done = _run("moe_offload_lab.sim.tune.cli",
                ["export", "--study", "space", "--out", str(tmp_path / "tune"), "--dir",
                 str(tmp_path / "exported")], EXAMPLE)
    assert done.returncode == 0, done.stderr
    exported = yaml.safe_load((tmp_path / "exported" / "tuned-space.yaml").read_text())
    assert exported["predictor"]["_target_"] == "transition_table.TransitionTablePredictor"
    command = done.stdout.strip().splitlines()[-1].split()  # (tests/sim runs such commands)
    assert command[:2] == ["moe-sim", f"policy={(tmp_path / 'exported' / 'tuned-space.yaml')}"]


def test_executor_imports_the_plugin(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    done = _run("moe_offload_lab.hw.cli",
                ["run", "--model", "mixtral-8x7b", "--layers", "4", "--hidden", "64",
                 "--intermediate", "128", "--policy", str(POLICY), "--slots", "12", "--tokens",
                 "96", "--device", "cpu", "-o", str(tmp_path / "hw")], EXAMPLE)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "hw" / "summary.json").read_text())
    assert summary["policy"] == "transition-table" and summary["hw_prefetches"] > 0


def test_installed_package_registers_through_its_entry_point(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="pip --no-build-isolation needs setuptools")
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--no-index", "--target", str(site),
                          str(source)], capture_output=True, text=True, timeout=600, check=False)
    assert pip.returncode == 0, pip.stderr
    listed = _run("moe_offload_lab.policies.cli", ["components", "--kind", "predictor"], site)
    assert listed.returncode == 0, listed.stderr
    assert "transition-table" in listed.stdout and "transition-table-policy 0.1.0" in listed.stdout
    done = _run("moe_offload_lab.sim.cli", [f"policy={POLICY_EP}", "trace.tokens=300",
                                            f"out={tmp_path / 'run'}"], site)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["policy"] == "transition-table-ep" and summary["prefetch_copies"] > 0
