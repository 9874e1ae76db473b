"""moe-tune: shared storages, interruption and resume, export, Pareto fronts, bad inputs.

Real Optuna storages (SQLite, journal file), real Hydra composition, tiny traces.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml
from moe_offload_lab.sim.cli import compose, run_config
from moe_offload_lab.sim.run import simulate
from moe_offload_lab.sim.tune.cli import main
from moe_offload_lab.sim.tune.export import export_trial, pick_trial, split_overrides
from moe_offload_lab.sim.tune.space import check_space, load_space, parse_space
from moe_offload_lab.sim.tune.storage import open_storage
from moe_offload_lab.sim.tune.study import finished, open_study, run_parallel, run_worker
from moe_offload_lab.traces.catalog import conf_dir
from moe_offload_lab.traces.errors import ConfigError
from optuna.trial import TrialState

SPACE = {
    "objective": "tpot_ms_mean",
    "base": ["trace.tokens=400"],
    "prune": {"prefix": 0.75, "startup_trials": 2},
    "params": {
        "policy": {"type": "categorical",
                   "choices": ["lru", "lookahead-budgeted", "gate-lookahead"]},
        "policy.planner.min_confidence": {"type": "float", "low": 0.0, "high": 0.9,
                                          "when": {"policy": ["lookahead-budgeted",
                                                              "gate-lookahead"]}},
        "policy.planner.budget_experts": {"type": "int", "low": 1, "high": 6,
                                          "when": {"policy": ["lookahead-budgeted"]}},
    },
}
PARETO = {
    "objective": ["tpot_ms_mean", "cache_bytes"],
    "base": ["trace.tokens=400"],
    "prune": {"prefix": None},
    "params": {
        "cache.fraction": {"type": "float", "low": 0.25, "high": 1.0, "step": 0.25},
        "policy": {"type": "categorical", "choices": ["lru", "lookahead-budgeted"]},
    },
}


def _space(tmp_path: Path, data: dict, name: str = "tiny"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_space(path)


def _finished(study) -> list:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_two_worker_processes_share_a_journal(tmp_path: Path) -> None:
    space = _space(tmp_path, SPACE)
    spec = f"journal:{tmp_path / 'study.log'}"
    assert run_parallel(space, "shared", spec, 8, workers=2, seed=1)
    trials = open_study(spec, "shared").get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # each trial recorded exactly once
    assert 8 <= len(trials) <= 9  # both may start a last trial at once
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert any(t.state == TrialState.COMPLETE for t in trials)
    assert len({t._trial_id for t in trials}) == len(trials)


def test_interrupted_study_resumes_without_losing_trials(tmp_path: Path) -> None:
    space = _space(tmp_path, SPACE)
    spec = f"sqlite:///{tmp_path / 'study.db'}"

    def interrupt(study, trial) -> None:
        if trial.number == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_worker(space, "resume", spec, 6, callbacks=[interrupt])
    first = {t.number: t.values for t in _finished(open_study(spec, "resume"))}
    assert sorted(first) == [0, 1, 2]
    assert run_worker(space, "resume", spec, 6)
    study = open_study(spec, "resume")
    assert finished(study) == 6
    again = {t.number: t.values for t in _finished(study)}
    assert all(again[n] == v for n, v in first.items())


def test_ctrl_c_stops_after_the_running_trial(tmp_path: Path) -> None:
    space = _space(tmp_path, SPACE)
    spec = f"journal:{tmp_path / 'study.log'}"

    def ctrl_c(study, trial) -> None:
        if trial.number == 1:
            os.kill(os.getpid(), signal.SIGINT)

    assert not run_worker(space, "stop", spec, 10, callbacks=[ctrl_c])
    study = open_study(spec, "stop")
    assert finished(study) in (2, 3) and len(study.get_trials()) == finished(study)
    assert run_worker(space, "stop", spec, 5)
    assert finished(open_study(spec, "stop")) == 5


def test_exported_config_reproduces_the_best_value(tmp_path: Path) -> None:
    space = _space(tmp_path, SPACE)
    spec = f"sqlite:///{tmp_path / 'study.db'}"
    run_worker(space, "exp", spec, 6, seed=3)
    study = open_study(spec, "exp")
    best = pick_trial(study)
    policy_dir = tmp_path / "conf" / "policy"
    path, command = export_trial(study, best, "tuned-exp", policy_dir)
    assert path == policy_dir / "tuned-exp.yaml" and "policy=tuned-exp" in command
    _, _, rest = split_overrides(best.user_attrs["overrides"])
    cfg = run_config(compose(rest))
    cfg.policy = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert simulate(cfg).summary["tpot_ms_mean"] == pytest.approx(best.value, rel=1e-12)
    searchpath = f"hydra.searchpath=[file://{policy_dir.parent.as_posix()}]"
    cfg = run_config(compose(["policy=tuned-exp", *rest, searchpath]))
    assert simulate(cfg).summary["tpot_ms_mean"] == pytest.approx(best.value, rel=1e-12)
    with pytest.raises(ConfigError, match="exists"):
        export_trial(study, best, "tuned-exp", policy_dir)
    export_trial(study, best, "tuned-exp", policy_dir, force=True)
    assert not [p for p in policy_dir.iterdir() if p.name.startswith(".")]


def test_multi_objective_returns_a_non_dominated_front(tmp_path: Path) -> None:
    space = _space(tmp_path, PARETO, "pareto")
    spec = f"journal:{tmp_path / 'study.log'}"
    run_worker(space, "front", spec, 8, seed=0)
    study = open_study(spec, "front")
    front = study.best_trials
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert front

    def dominates(a, b) -> bool:
        pairs = zip(a.values, b.values, strict=True)
        return all(x <= y for x, y in pairs) and a.values != b.values

    assert not any(dominates(a, b) for a in front for b in front)
    front_numbers = {t.number for t in front}
    for t in complete:
        if t.number not in front_numbers:
            assert any(dominates(f, t) or f.values == t.values for f in front)


@pytest.mark.parametrize(("change", "match"), [
    ({"params": {"policy.planner.bogus": {"type": "float", "low": 0, "high": 1}}},
     "bogus"),
    ({"params": {"cachee.fraction": {"type": "float", "low": 0.1, "high": 1}}}, "cachee"),
    ({"params": {"policy": {"type": "categorical", "choices": ["lru", "no-such-policy"]}}},
     "unknown policy 'no-such-policy'"),
    ({"params": {"policy": {"type": "categorical", "choices": ["lru", "missing/mine.yaml"]}}},
     "no such file"),
    ({"params": {"policy": {"type": "categorical", "choices": ["lru", "lookahead-budgeted"]},
                 "policy.planner.budget_experts": {"type": "int", "low": 1, "high": 4}}},
     "when"),
])
def test_bad_parameters_raise_one_config_error(tmp_path: Path, change: dict, match: str) -> None:
    space = _space(tmp_path, {**SPACE, **change})
    with pytest.raises(ConfigError, match=match) as info:
        check_space(space)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("data", "match"), [
    ({"params": {}}, "no parameters"),
    ({}, "no parameters"),
    ({**SPACE, "objective": "hit_rate"}, "unknown objective"),
    ({**SPACE, "params": {"x": {"type": "float", "low": 2, "high": 1}}}, "above high"),
])
def test_bad_spaces(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_space(data, "bad")


@pytest.mark.parametrize("spec", ["nonsense", "foo://x/y", "postgresql+nodriver://u@h/db"])
def test_bad_storage_urls(spec: str) -> None:
    with pytest.raises(ConfigError, match="--storage"):
        open_storage(spec)


def test_cli_user_errors_are_one_line_and_write_nothing(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**SPACE, "params": {}}), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["run", str(path), "--trials", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-tune: error:") and err.count("\n") == 1
    assert not out.exists()
    assert main(["run", str(path), "--storage", "bogus", "--out", str(out)]) == 2
    assert main(["show", "--study", "none", "--storage", f"journal:{tmp_path / 'j.log'}"]) == 2
    assert "no study storage" in capsys.readouterr().err
    assert not (tmp_path / "j.log").exists()  # a read-only command creates nothing


def test_cli_run_show_best_export(tmp_path: Path, capsys) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(SPACE), encoding="utf-8")
    out = tmp_path / "out"
    common = ["--study", "c", "--out", str(out)]
    assert main(["run", str(path), "--trials", "3", "--no-progress", *common]) == 0
    assert (out / "c" / "study.db").is_file()
    assert main(["run", str(path), "--trials", "4", "--no-progress", *common]) == 0
    assert main(["show", *common]) == 0
    assert main(["best", *common]) == 0
    assert main(["export", *common, "--dir", str(tmp_path / "policy")]) == 0
    text = capsys.readouterr().out
    assert "4 finished trials" in text and "moe-sim policy=tuned-c" in text
    assert (tmp_path / "policy" / "tuned-c.yaml").is_file()
    assert main(["run", str(path), "--trials", "4", "--objective", "tpot_ms_p99",
                 *common]) == 2  # another objective: another study


# A worker killed mid-study and rerun: tests/faults/test_faults_tune.py (journal, SQLite,
# PostgreSQL), with the killed trial failed rather than left RUNNING.


def test_a_policy_file_is_one_of_several_policy_choices(tmp_path: Path) -> None:
    """A policy YAML (a plug-in's, or one's own) beside bundled names in ``policy``'s choices:
    the space checks, and trials run both, with the file's own parameters tuned."""
    mine = yaml.safe_load((conf_dir() / "policy" / "gate-lookahead.yaml").read_text())
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({**mine, "name": "mine"}))
    choice = str(tmp_path / "mine.yaml")
    space = _space(tmp_path, {
        "objective": "tpot_ms_mean", "base": ["trace.tokens=300"], "prune": {"prefix": None},
        "params": {"policy": {"type": "categorical", "choices": ["lru", choice]},
                   "policy.planner.min_confidence": {"type": "float", "low": 0.0, "high": 0.9,
                                                     "when": {"policy": [choice]}}}})
    check_space(space)
    spec = f"journal:{tmp_path / 'study.log'}"
    run_worker(space, "files", spec, 6, seed=0)
    trials = open_study(spec, "files").get_trials(states=(TrialState.COMPLETE,))
    assert {t.params["policy"] for t in trials} == {"lru", choice}
    assert all("policy.planner.min_confidence" in t.params
               for t in trials if t.params["policy"] == choice)
