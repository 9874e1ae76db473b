"""moe-sim killed and interrupted at random points, single runs and sweeps, then rerun or
resumed: no half-written file, finished jobs kept (never redone), the rest resumed."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from faults_testing import (
    RNG,
    TALLY,
    assert_interrupted_cleanly,
    check_tree,
    command,
    lost,
    no_temporaries,
    run,
    signal_at_random,
    start,
    wait_until,
)
from moe_offload_lab.sim.cli import checked_run_config
from moe_offload_lab.sim.run import simulate

RUN = ["trace.tokens=800", "policy=gate-lookahead"]
SWEEP = ["-m", "hydra/launcher=basic", "policy=lru,fifo,gate-lookahead", "trace.tokens=400"]


def _same_results(folder: Path, reference: dict) -> None:
    summary = json.loads((folder / "summary.json").read_text())
    strip = ("sim_wall_s",)
    assert {k: v for k, v in summary.items() if k not in strip} == \
        {k: v for k, v in reference.items() if k not in strip}


@pytest.fixture(scope="module")
def reference() -> dict:
    result = simulate(checked_run_config(RUN))
    return json.loads(json.dumps(result.summary, default=str))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "interrupt"])
def test_single_run(tmp_path: Path, reference: dict, sig: int) -> None:
    out = tmp_path / "run"
    proc = start(command("sim.cli", *RUN, f"out={out}"))
    outcome = signal_at_random(proc, sig, 6.0)
    if sig == signal.SIGINT:
        assert_interrupted_cleanly(outcome, (0, 130))
    check_tree(out)  # whatever it left is whole
    rerun = run(command("sim.cli", *RUN, f"out={out}"))
    assert rerun.returncode == 0, rerun.stderr
    check_tree(out)
    no_temporaries(out)
    _same_results(out, reference)


def _done(folder: Path) -> dict[str, int]:
    """Finished jobs -> their summary's modification time."""
    return {p.parent.name: (p.parent / "summary.json").stat().st_mtime_ns
            for p in folder.glob("*/.done")}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "interrupt"])
def test_sweep_resumes_without_redoing_finished_jobs(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "sweep"
    proc = start(command("sim.cli", *SWEEP, f"out={out}"))
    wait_until(proc, lambda: (out / "sweep.json").is_file())
    outcome = signal_at_random(proc, sig, 5.0)
    if sig == signal.SIGINT:
        assert_interrupted_cleanly(outcome, (0, 130, 2))
    check_tree(out)
    finished = _done(out)
    collect = run(command("sim.cli", "sweep", "collect", out))
    table = pd.read_csv(out / "sweep.csv")
    assert sorted(str(j) for j in table.loc[table["status"] == "ok", "job"]) == sorted(finished)
    assert collect.returncode == (0 if len(finished) == 3 else 2)
    resume = run(command("sim.cli", "sweep", "resume", out))
    assert resume.returncode == 0, resume.stderr
    table = pd.read_csv(out / "sweep.csv")
    assert table["status"].tolist() == ["ok", "ok", "ok"]
    after = _done(out)
    assert lost(sum(after.get(j) != t for j, t in finished.items())) == 0  # not redone
    check_tree(out)
    no_temporaries(out)


def test_a_killed_sweep_worker_ends_the_sweep_with_one_line_and_its_table(
        tmp_path: Path) -> None:
    """A joblib worker process dies (out of memory, killed): the sweep reports it in one line,
    writes the table of the jobs that finished, and resume completes it."""
    import psutil

    out = tmp_path / "sweep"
    proc = start(command("sim.cli", "-m", "hydra.launcher.n_jobs=2", "policy=lru,fifo,lfu",
                         "trace.tokens=1000", f"out={out}"))

    def workers() -> list[psutil.Process]:
        """Loky worker processes, once a job runs (its folder exists, not done)."""
        if not any(p.is_dir() and not (p / ".done").exists() for p in out.glob("[0-9]*")):
            return []
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if "LokyProcess" in " ".join(_cmdline(c))]

    if wait_until(proc, lambda: bool(workers())):
        time.sleep(RNG.uniform(0.0, 2.0))
        try:
            workers()[0].kill()
            TALLY.kills += 1
        except (IndexError, psutil.NoSuchProcess):
            TALLY.finished_first += 1
    _, err = proc.communicate()
    if proc.returncode != 0:  # the worker died mid-job (else every job had finished)
        assert proc.returncode == 2, err
        lines = [line for line in err.splitlines() if line.startswith("moe-sim: error:")]
        assert len(lines) == 1 and "resume" in lines[0], err
        assert "Traceback" not in err
    finished = _done(out)
    check_tree(out)
    assert (out / "sweep.csv").is_file()
    assert run(command("sim.cli", "sweep", "resume", out)).returncode == 0
    assert pd.read_csv(out / "sweep.csv")["status"].tolist() == ["ok"] * 3
    assert lost(sum(_done(out).get(j) != t for j, t in finished.items())) == 0


def _cmdline(process) -> list[str]:  # noqa: ANN001 - a psutil.Process
    try:
        return process.cmdline()
    except Exception:  # noqa: BLE001 - it ended meanwhile
        return []
