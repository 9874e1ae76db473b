"""moe-tune as a team runs it: distinct samples per worker, dead workers' trials failed at
resume on every storage, masked passwords, study names that say who and what, read-only
commands that create nothing, PostgreSQL (a real local server) and SLURM arrays run locally.

Real Optuna storages (journal, SQLite, PostgreSQL when the machine has a server), real
processes; nothing is mocked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from moe_offload_lab.sim.tune.cli import main
from moe_offload_lab.sim.tune.sampler import TrialSeededSampler
from moe_offload_lab.sim.tune.space import load_space
from moe_offload_lab.sim.tune.stale import HEARTBEAT_ATTR, OWNER_ATTR, fail_stale, owner_tag
from moe_offload_lab.sim.tune.storage import mask, scrub
from moe_offload_lab.sim.tune.study import finished, open_study, run_worker
from optuna.trial import TrialState

# float parameters only: two samples are equal only if the samplers' streams are
SPACE = {"objective": "tpot_ms_mean", "base": ["trace.tokens=120", "policy=lru"],
         "prune": {"prefix": None},
         "params": {"cache.fraction": {"type": "float", "low": 0.25, "high": 1.0}}}


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(SPACE), encoding="utf-8")
    return path


def _storages(tmp_path: Path) -> list[str]:
    return [f"journal:{tmp_path / 'j.log'}", f"sqlite:///{tmp_path / 's.db'}"]


def _dead_owner() -> str:
    """The owner tag of a process of this host that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return f"{socket.gethostname()}:{done.stdout.strip()}:gone"


# ---- samplers -----------------------------------------------------------------------------------
def test_two_processes_with_one_seed_sample_different_trials(tmp_path: Path,
                                                             space_file: Path) -> None:
    """Two workers opened at the same moment with the same seed (the issue: 13 trials, 6
    distinct configurations) draw different values: each trial is seeded by its number."""
    space = load_space(space_file)
    spec = f"journal:{tmp_path / 'j.log'}"
    a, b = (open_study(spec, "s", space, seed=7) for _ in range(2))
    values = []
    for _ in range(3):
        for study in (a, b):
            trial = study.ask()
            values.append(space.sample(trial)["cache.fraction"])
    assert len(set(values)) == len(values) == 6


def test_one_process_is_reproducible_from_its_seed(tmp_path: Path, space_file: Path) -> None:
    space = load_space(space_file)
    runs = []
    for name in ("a", "b"):
        spec = f"journal:{tmp_path / f'{name}.log'}"
        run_worker(space, "s", spec, 3, seed=11)
        runs.append([t.params["cache.fraction"] for t in open_study(spec, "s").get_trials()])
    assert runs[0] == runs[1] and len(set(runs[0])) == 3
    assert isinstance(open_study(f"journal:{tmp_path / 'a.log'}", "s").sampler,
                      TrialSeededSampler)


# ---- stale trials -------------------------------------------------------------------------------
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() below

@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_dead_workers_trial_is_failed_at_resume(tmp_path: Path, space_file: Path,
                                                  kind: str) -> None:
    spec = dict(zip(("journal", "sqlite"), _storages(tmp_path), strict=True))[kind]
    _assert_stale_trials_failed(spec, load_space(space_file))


def test_a_dead_workers_trial_is_failed_on_postgresql(postgres, space_file: Path) -> None:  # noqa: ANN001
    _assert_stale_trials_failed(postgres.url(), load_space(space_file), schema="tuner_space",
                                name=f"stale-{os.getpid()}")


def _assert_stale_trials_failed(spec: str, space, schema: str | None = None,  # noqa: ANN001
                                name: str = "s") -> None:
    run_worker(space, name, spec, 2, schema=schema)
    study = open_study(spec, name, space, schema=schema)
    dead = study.ask()  # left RUNNING by a worker that is gone (this host, exited process)
    study._storage.set_trial_user_attr(dead._trial_id, OWNER_ATTR, _dead_owner())
    away = study.ask()  # another host, heartbeat long ago: failed too
    study._storage.set_trial_user_attr(away._trial_id, OWNER_ATTR, "elsewhere:1:x")
    study._storage.set_trial_user_attr(away._trial_id, HEARTBEAT_ATTR, time.time() - 3600)
    busy = study.ask()  # another host with a fresh heartbeat: still running, kept
    study._storage.set_trial_user_attr(busy._trial_id, OWNER_ATTR, "elsewhere:2:x")
    study._storage.set_trial_user_attr(busy._trial_id, HEARTBEAT_ATTR, time.time())
    mine = study.ask()  # this very process: alive
    study._storage.set_trial_user_attr(mine._trial_id, OWNER_ATTR, owner_tag())
    assert fail_stale(study) == [dead.number, away.number]
    assert run_worker(space, name, spec, 4, schema=schema)  # resumes to 4 finished trials
    after = {t.number: t for t in open_study(spec, name, schema=schema).get_trials()}
    assert after[dead.number].state == after[away.number].state == TrialState.FAIL
    assert after[busy.number].state == after[mine.number].state == TrialState.RUNNING
    assert finished(open_study(spec, name, schema=schema)) == 4


# ---- messages, names, read-only commands --------------------------------------------------------
def test_passwords_never_appear(space_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://me:s3cr%40t@127.0.0.1:1/db"
    assert mask(url) == "postgresql://me:***@127.0.0.1:1/db"
    assert scrub(f"boom {url} and s3cr@t", url) == "boom postgresql://me:***@127.0.0.1:1/db and ***"
    assert main(["run", str(space_file), "--trials", "1", "--storage", url, "--no-progress"]) == 2
    assert main(["show", "--study", "x", "--storage", url]) == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "s3cr" not in text and "***" in text
    assert all(line.startswith("moe-tune: error:") for line in captured.err.splitlines()
               if "error" in line)


def test_default_study_name_says_who_and_what(tmp_path: Path, space_file: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    for user in ("ann", "bob"):
        monkeypatch.setenv("LOGNAME", user)
        assert main(["run", str(space_file), "--trials", "1", "--out", str(out),
                     "--no-progress"]) == 0
    assert main(["run", str(space_file), "--trials", "1", "--out", str(out), "--no-progress",
                 "--study-from-space"]) == 0
    assert sorted(p.parent.name for p in out.glob("*/study.db")) == [
        "shared", "shared.tpot_ms_mean.ann", "shared.tpot_ms_mean.bob"]
    assert main(["show", "--out", str(out)]) == 0  # no --study: the studies there
    assert "shared, shared.tpot_ms_mean.ann, shared.tpot_ms_mean.bob" in capsys.readouterr().out


def test_read_only_commands_create_nothing(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    for command in ("show", "best", "export"):
        assert main([command, "--study", "nosuch", "--out", str(out)]) == 2
        assert main([command, "--study", "nosuch",
                     "--storage", f"journal:{tmp_path / 'none.log'}"]) == 2
        assert main([command, "--study", "nosuch",
                     "--storage", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert sorted(os.listdir(tmp_path)) == []
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 9 and all(line.startswith("moe-tune: error:") for line in err)


@pytest.mark.parametrize(("storage", "match"), [
    ("journal:{tmp}/a.parquet", "not an Optuna journal file"),
    ("journal:{tmp}/missing/t.log", "does not exist; create it first"),
    ("sqlite:///{tmp}/missing/t.db", "does not exist; create it first"),
    ("journal:{tmp}", "is a folder"),
])
def test_bad_storages_are_one_line(tmp_path: Path, space_file: Path, storage: str, match: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.parquet").write_bytes(b"PAR1\x00\x9f\xff binary")
    before = sorted(p.name for p in tmp_path.iterdir())
    spec = storage.format(tmp=tmp_path)
    assert main(["run", str(space_file), "--trials", "1", "--storage", spec,
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("moe-tune: error:") and match in err[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created


def test_export_to_an_unwritable_folder_is_one_line(tmp_path: Path, space_file: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--study", "e", "--out", str(tmp_path / "out")]
    assert main(["run", str(space_file), "--trials", "1", "--no-progress", *common]) == 0
    capsys.readouterr()
    (tmp_path / "file").write_text("x")
    for folder in ("/proc/nope", str(tmp_path / "file" / "sub")):
        assert main(["export", *common, "--dir", folder]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("moe-tune: error: --dir") and "\n" not in err


# ---- PostgreSQL ---------------------------------------------------------------------------------
def test_postgresql_storage_schema_and_permissions(postgres, space_file: Path,  # noqa: ANN001
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A bare postgresql:// URL works (psycopg 3); a user without CREATE on public gets one
    clear line; --schema with a schema it owns works; the password never shows."""
    url = postgres.url()
    run = ["run", str(space_file), "--study", f"pg-{os.getpid()}", "--storage", url,
           "--trials", "2", "--no-progress"]
    assert main(run) == 2
    err = capsys.readouterr().err
    assert "permission denied for schema public" in err and "--schema" in err
    assert main([*run, "--schema", "tuner_space"]) == 0
    assert main(["show", "--study", f"pg-{os.getpid()}", "--storage", url,
                 "--schema", "tuner_space"]) == 0
    assert main([*run, "--schema", "not_mine"]) == 2  # may not create schemas
    captured = capsys.readouterr()
    assert "CREATE SCHEMA not_mine" in captured.err
    assert "tuner-secret" not in captured.out + captured.err
    study = open_study(url, f"pg-{os.getpid()}", schema="tuner_space")
    assert finished(study) == 2


# ---- SLURM --------------------------------------------------------------------------------------
def test_slurm_array_runs_locally(tmp_path: Path, space_file: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The generated array script, run as two tasks at once with SLURM_ARRAY_TASK_ID set,
    fills one shared study to its total with distinct samples from both tasks."""
    journal = tmp_path / "shared.log"
    folder = tmp_path / "array"
    assert main(["slurm", str(space_file), "--study", "arr", "--storage", f"journal:{journal}",
                 "--tasks", "2", "--trials", "6", "--dir", str(folder), "--time-min", "30"]) == 0
    script = folder / "moe-tune-arr.sbatch"
    text = script.read_text()
    assert "#SBATCH --array=0-1" in text and "#SBATCH --time=30" in text
    assert "sbatch" in capsys.readouterr().out
    tasks = [subprocess.Popen(["bash", str(script)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "SLURM_ARRAY_JOB_ID": "77",
                                   "SLURM_ARRAY_TASK_ID": str(i)}) for i in range(2)]
    errors = [t.communicate()[1] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], errors
    study = open_study(f"journal:{journal}", "arr")
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert 6 <= len(trials) <= 7  # both tasks may start a last trial at once
    values = [t.params["cache.fraction"] for t in trials]
    assert len(set(values)) == len(values)
    assert {t.user_attrs.get("slurm_task") for t in trials} <= {"77_0", "77_1"}


def test_slurm_refuses_sqlite_and_hides_passwords(tmp_path: Path, space_file: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["slurm", str(space_file), "--tasks", "2", "--trials", "4",
                 "--storage", f"sqlite:///{tmp_path / 's.db'}"]) == 2
    assert "SQLite" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()
    assert main(["slurm", str(space_file), "--tasks", "2", "--trials", "4"]) == 2
    assert "needs --storage" in capsys.readouterr().err


def test_slurm_script_reads_a_password_url_from_the_environment(postgres, tmp_path: Path,  # noqa: ANN001
                                                                space_file: Path) -> None:
    folder = tmp_path / "array"
    assert main(["slurm", str(space_file), "--study", f"arr-{os.getpid()}", "--tasks", "3",
                 "--trials", "4", "--storage", postgres.url(), "--schema", "tuner_space",
                 "--dir", str(folder)]) == 0
    text = (folder / f"moe-tune-arr-{os.getpid()}.sbatch").read_text()
    assert "tuner-secret" not in text and "MOE_TUNE_STORAGE" in text
    assert main(["slurm", str(space_file), "--study", f"arr-{os.getpid()}", "--tasks", "3",
                 "--trials", "4", "--storage", postgres.url(), "--schema", "tuner_space",
                 "--dir", str(folder), "--submit"]) == 2  # no sbatch on this machine


def test_a_worker_claims_each_trial_before_it_is_sampled(tmp_path: Path, space_file: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner is stamped when Optuna hands the sampler a new trial, not once the objective
    runs: a worker killed while its trial is being sampled leaves a trial the next worker fails
    at once (an unowned one waits for the grace period)."""
    import moe_offload_lab.sim.tune.study as study_module

    claimed: list[bool] = []

    class Recording(TrialSeededSampler):
        def before_trial(self, study, trial) -> None:  # noqa: ANN001 - Optuna's objects
            super().before_trial(study, trial)
            claimed.append(OWNER_ATTR in study._storage.get_trial(trial._trial_id).user_attrs)

    monkeypatch.setattr(study_module, "TrialSeededSampler", Recording)
    run_worker(load_space(space_file), "claims", f"journal:{tmp_path / 'j.log'}", 3, seed=0)
    assert claimed == [True, True, True]
