"""moe-tune killed and interrupted at random points on a journal, SQLite and a real PostgreSQL
(when the machine has one), then rerun: finished trials kept unchanged, the dead worker's trial
failed instead of left RUNNING, the study completed to its total."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import yaml
from faults_testing import (
    assert_interrupted_cleanly,
    checked,
    command,
    lost,
    run,
    signal_at_random,
    start,
    wait_until,
)
from moe_offload_lab.sim.tune.stale import OWNER_ATTR, is_stale
from moe_offload_lab.sim.tune.storage import GRACE_S
from moe_offload_lab.sim.tune.study import finished, open_study
from optuna.trial import TrialState

SPACE = {"objective": "tpot_ms_mean", "base": ["trace.tokens=150", "policy=lru"],
         "prune": {"prefix": None},
         "params": {"cache.fraction": {"type": "float", "low": 0.25, "high": 1.0}}}
TRIALS = 16


def _finished_values(spec: str, name: str, schema: str | None) -> dict[int, list[float]]:
    try:
        study = open_study(spec, name, schema=schema)
    except Exception:  # noqa: BLE001 - not created yet
        return {}
    return {t.number: t.values for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))}


def _kill_and_resume(tmp_path: Path, spec: str, sig: int, schema: str | None = None,
                     name: str = "faults") -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE), encoding="utf-8")
    args = ["run", space, "--study", name, "--storage", spec, "--trials", TRIALS,
            "--no-progress", *(["--schema", schema] if schema else [])]
    proc = start(command("sim.tune.cli", *args))
    wait_until(proc, lambda: len(_finished_values(spec, name, schema)) >= 1, poll_s=0.2)
    outcome = signal_at_random(proc, sig, 2.0)
    if sig == signal.SIGINT:
        assert_interrupted_cleanly(outcome, (0, 130))
    before = _finished_values(spec, name, schema)
    rerun = run(command("sim.tune.cli", *args))
    assert rerun.returncode == 0, rerun.stderr
    study = open_study(spec, name, schema=schema)
    after = _finished_values(spec, name, schema)
    assert lost(sum(after.get(n) != v for n, v in before.items())) == 0
    checked(len(after))
    assert finished(study) >= TRIALS
    # none left running for ever: a trial of the killed worker is failed by the rerun at once
    # when it was claimed (owner stamped); a kill in the two storage writes between Optuna
    # creating a trial and the worker claiming it leaves it unowned, failed after the grace period
    for trial in study.get_trials(states=(TrialState.RUNNING,)):
        assert OWNER_ATTR not in trial.user_attrs, trial.user_attrs
        assert is_stale(trial, now=time.time() + GRACE_S + 1)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "interrupt"])
def test_journal(tmp_path: Path, sig: int) -> None:
    _kill_and_resume(tmp_path, f"journal:{tmp_path / 'study.log'}", sig)


def test_sqlite(tmp_path: Path) -> None:
    _kill_and_resume(tmp_path, f"sqlite:///{tmp_path / 'study.db'}", signal.SIGKILL)


def test_postgresql(tmp_path: Path, postgres) -> None:  # noqa: ANN001 - the server fixture
    _kill_and_resume(tmp_path, postgres.url(), signal.SIGKILL, schema="tuner_space",
                     name=f"faults-{tmp_path.name}")
