"""The bad-input list of the "trustworthy at scale" issue, one test per case (expert-parallel
``cluster=`` cases are tested in tests/sim/cluster; moe-tune's in tests/sim/tune).

Each bad input ends with one clear line on stderr and exit status 2, and leaves nothing behind
(no half-written file, no ``.hydra``-only folder); each case the issue found "accepted silently"
now has the right behaviour. Commands run in-process through their ``main`` (real Hydra, real
Parquet), or as subprocesses where a memory limit is part of the case.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from moe_offload_lab.hw.cli import main as moe_hw
from moe_offload_lab.policies.cli import main as moe_policy
from moe_offload_lab.policies.learned.cli import main as moe_train
from moe_offload_lab.sim.cli import main as moe_sim
from moe_offload_lab.sim.report.cli import main as moe_report
from moe_offload_lab.traces.catalog import load_model
from moe_offload_lab.traces.cli import main as moe_trace
from moe_offload_lab.traces.format import Trace

UNWRITABLE = "/proc/nope"  # a folder nobody can create, root included


def _one_line(capsys: pytest.CaptureFixture[str], prog: str, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{prog}: error:") and "\n" not in err, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small Mixtral traces: without lookahead columns (as imports are), with distance 1 only,
    and a 0-token one."""
    folder = tmp_path_factory.mktemp("traces")
    paths = {}
    for name, lookahead in (("none", "0"), ("one", "1")):
        paths[name] = folder / f"{name}.parquet"
        assert moe_trace(["synth", "--preset", "mixtral-8x7b", "--tokens", "200", "--lookahead",
                          lookahead, "--quiet", "-o", str(paths[name])]) == 0
    spec = load_model("switch-base-8")
    shape = (0, spec.num_moe_layers, spec.top_k)
    empty = Trace(spec, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int8),
                  np.zeros(shape, np.int16), np.zeros(shape, np.float32), {}, None, {})
    paths["empty"] = folder / "empty.parquet"
    empty.save(paths["empty"])
    return paths


# ---- output paths: one line before the work, not a traceback after it -----------------------
@pytest.mark.parametrize("where", ["unwritable", "folder", "under a file"])
def test_moe_trace_synth_output_paths(where: str, tmp_path: Path, a_file: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    output = {"unwritable": f"{UNWRITABLE}/x.parquet", "folder": str(tmp_path),
              "under a file": str(a_file / "x.parquet")}[where]
    assert moe_trace(["synth", "--preset", "switch-base-8", "--tokens", "200", "-o",
                      output]) == 2
    _one_line(capsys, "moe-trace", "-o")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize("out", ["a file", "unwritable"])
def test_moe_sim_out_paths(out: str, a_file: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    target = str(a_file) if out == "a file" else UNWRITABLE
    assert moe_sim(["trace.tokens=200", f"out={target}"]) == 2
    _one_line(capsys, "moe-sim", "out")
    assert a_file.read_text() == "not a folder"
    assert moe_sim(["-m", "policy=lru,fifo", "trace.tokens=200", f"out={target}"]) == 2
    _one_line(capsys, "moe-sim", "out")


def test_moe_hw_output_paths(a_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert moe_hw(["run", "--model", "mixtral-8x7b", "--layers", "2", "--hidden", "32",
                   "--intermediate", "32", "--tokens", "8", "-o", str(a_file)]) == 2
    _one_line(capsys, "moe-hw", "-o", "not a folder")
    assert moe_hw(["live", "--model", "tiny-mixtral", "--prompt", "def f(", "--max-new-tokens",
                   "1", "-o", UNWRITABLE]) == 2
    _one_line(capsys, "moe-hw", "-o", "cannot write")


def test_moe_train_output_path_is_checked_before_training(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert moe_train(["predictor=mlp-history", f"out={UNWRITABLE}/m.pt"]) == 2
    err = _one_line(capsys, "moe-train", "out")
    assert "cannot write" in err


# ---- sizes: checked up front (no MemoryError) -------------------------------------------------
def _limited(args: list[str], limit_gib: float = 3.0) -> subprocess.CompletedProcess[str]:
    """A command in a subprocess whose address space is capped (ulimit -v)."""
    limit = int(limit_gib * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-c", "import sys; from importlib import import_module;"
                           " m, a = sys.argv[1], sys.argv[2:];"
                           " sys.exit(import_module(m).main(a))", *args],
                          preexec_fn=cap, capture_output=True, text=True, timeout=None)


def test_huge_traces_are_refused_before_any_allocation(tmp_path: Path) -> None:
    done = _limited(["moe_offload_lab.traces.cli", "synth", "--tokens", "1000000000", "-o",
                     str(tmp_path / "big.parquet")])
    assert done.returncode == 2 and done.stderr.startswith("moe-trace: error:"), done.stderr
    assert "GiB" in done.stderr and done.stderr.count("\n") == 1
    done = _limited(["moe_offload_lab.sim.cli", "trace.tokens=200000000",
                     f"out={tmp_path / 'sim'}"])
    assert done.returncode == 2 and done.stderr.startswith("moe-sim: error:"), done.stderr
    assert "GiB" in done.stderr and done.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---- accepted silently before: now refused, or right -------------------------------------------
@pytest.mark.parametrize(("overrides", "needle"), [
    (["workload=continuous", "workload.max_batch=0"], "workload.max_batch"),
    (["timeline_events=-1"], "timeline_events"),
    (["+workload.max_batch=4"], "continuous batching"),
    (["workload=continuous", "batch=4"], "workload.max_batch"),
    (["cache.slots=64", "cache.fraction=0.25"], "precedence"),
    (["experiment=compare", "policy=lru"], "compare.runs"),
    (["balance=eplb"], "cluster="),
    (["trace.bundled=tiny-moe-stdlib", "model=tiny-moe-stdlib", "trace.tokens=100"],
     "synthetic trace"),
    (["workload=continuous", "workload.rate_per_s=-1"], "rate_per_s"),
    (["workload=continuous", "workload.chunk=0"], "workload.chunk"),
])
def test_settings_that_would_be_ignored_or_are_invalid(
        overrides: list[str], needle: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert moe_sim(["trace.tokens=200", *overrides, f"out={out}"]) == 2
    _one_line(capsys, "moe-sim", needle)
    assert not out.exists()  # refused before Hydra made a folder


def test_a_learned_policy_on_the_wrong_model_leaves_no_debris(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert moe_sim(["policy=learned-llapor", "trace.tokens=200", f"out={out}"]) == 2
    _one_line(capsys, "moe-sim", "trained for")
    assert not out.exists()


def test_a_run_refused_after_hydra_started_leaves_no_debris(
        traces: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A trace file's lookahead columns are known once it is read, inside the run: the folder
    Hydra made for it, holding only .hydra, is removed; a folder with earlier results stays."""
    out = tmp_path / "run"
    assert moe_sim([f"trace.path={traces['none']}", "policy=gate-lookahead", f"out={out}"]) == 2
    _one_line(capsys, "moe-sim", "no lookahead")
    assert not out.exists()
    out.mkdir()
    (out / "summary.json").write_text("{}")
    assert moe_sim([f"trace.path={traces['none']}", "policy=gate-lookahead", f"out={out}"]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [".hydra", "summary.json"]


def test_lookahead_policies_need_the_traces_lookahead(traces: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Decided: an error (it would predict nothing: recall 0), naming the fix."""
    assert moe_sim([f"trace.path={traces['none']}", "policy=gate-lookahead",
                    f"out={tmp_path / 'a'}"]) == 2
    _one_line(capsys, "moe-sim", "gate-lookahead", "no lookahead", "--lookahead")
    assert moe_sim([f"trace.path={traces['one']}", "policy=gate-lookahead", "policy.horizon=2",
                    f"out={tmp_path / 'b'}"]) == 2
    _one_line(capsys, "moe-sim", "distances 1", "policy.horizon")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert moe_policy(["eval", str(traces["none"]), "--policy", "gate-lookahead"]) == 2
    _one_line(capsys, "moe-policy", "no lookahead")
    assert moe_policy(["eval", str(traces["one"]), "--policy", "gate-lookahead",
                       "--horizon", "3"]) == 2
    _one_line(capsys, "moe-policy", "predict nothing at 2, 3")
    assert moe_sim([f"trace.path={traces['one']}", "policy=gate-lookahead",
                    f"out={tmp_path / 'c'}"]) == 0  # what the trace has is fine
    capsys.readouterr()


def test_validate_refuses_a_trace_without_tokens(traces: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert moe_trace(["validate", str(traces["empty"])]) == 2
    _one_line(capsys, "moe-trace", "no tokens")


def test_a_gpu_budget_above_every_expert_caps_the_cache(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's own command: 2.6-bit Mixtral experts in 20 GB fit 293 slots of 256."""
    out = tmp_path / "run"
    assert moe_sim(["cache.gpu_memory_gb=20", "model.expert_bytes_per_param=0.325",
                    "trace.tokens=200", f"out={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["capacity_slots"] == 256 and summary["fits_gpu_memory"]
    capsys.readouterr()


def test_continuous_runs_report_their_real_batch(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert moe_sim(["workload=continuous", "workload.max_batch=4", "trace.tokens=300",
                    f"out={out}"]) == 0
    assert json.loads((out / "summary.json").read_text())["batch"] == 4
    assert "batch                   4" in capsys.readouterr().out


def test_slurm_launcher_without_slurm_is_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    assert moe_sim(["-m", "hydra/launcher=slurm", "policy=lru,fifo", "trace.tokens=100",
                    f"out={out}"]) == 2
    _one_line(capsys, "moe-sim", "could not start", "slurm")
    assert not out.exists()


def test_report_of_another_storage_never_overwrites_the_default_studys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    journal = tmp_path / "t.log"
    journal.write_text("")
    assert moe_report(["--storage", f"journal:{journal}", "--study", "default"]) == 2
    _one_line(capsys, "moe-report", "-o DIR")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.log"]
