"""``moe-sim --multirun``: sweep expansion, launchers and the combined table (sim/sweep.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from moe_offload_lab.sim.cli import main
from moe_offload_lab.sim.sweep import ERROR_FILE, collect, expand, read_plan, states, write_plan
from moe_offload_lab.traces.catalog import conf_dir
from moe_offload_lab.traces.errors import ConfigError


def test_expand_is_the_cartesian_product() -> None:
    jobs = expand(["policy=lru,fifo", "cache.fraction=0.25,0.5", "batch=2",
                   "hydra/launcher=basic"])
    assert jobs == [["policy=lru", "cache.fraction=0.25", "batch=2"],
                    ["policy=lru", "cache.fraction=0.5", "batch=2"],
                    ["policy=fifo", "cache.fraction=0.25", "batch=2"],
                    ["policy=fifo", "cache.fraction=0.5", "batch=2"]]
    assert expand(["batch=range(1,4)"]) == [["batch=1"], ["batch=2"], ["batch=3"]]
    assert expand([]) == [[]]
    with pytest.raises(ConfigError):
        expand(["policy=lru,"])


def test_sweep_writes_one_combined_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    out = tmp_path / "sweep"
    status = main(["--multirun", "hydra/launcher=basic", "policy=lru,fifo",
                   "cache.fraction=0.25,0.5", "trace.tokens=600",
                   f"out={out}"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "sweep.csv" in printed
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 4 and table["job"].tolist() == [0, 1, 2, 3]
    assert table[["policy", "cache.fraction"]].values.tolist() == [
        ["lru", 0.25], ["lru", 0.5], ["fifo", 0.25], ["fifo", 0.5]]
    assert (table["tokens_per_s"] > 0).all() and table["error"].isna().all()
    # a bigger LRU cache never lowers the hit rate
    lru = table[table["policy"] == "lru"].set_index("cache.fraction")["hit_rate"]
    assert lru[0.5] >= lru[0.25]
    for job in range(4):
        assert (out / str(job) / "summary.json").is_file()
    assert (out / "sweep.md").read_text().startswith("| job |")


def test_sweep_runs_in_parallel_with_joblib(tmp_path: Path) -> None:
    out = tmp_path / "parallel"
    assert main(["-m", "hydra.launcher.n_jobs=2", "policy=lru,gate-lookahead",
                 "trace.tokens=100", f"out={out}"]) == 0
    assert (out / "multirun.yaml").read_text().count("joblib") >= 1
    assert len(pd.read_csv(out / "sweep.csv")) == 2


def test_a_bad_sweep_value_stops_before_any_job(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    assert main(["-m", "hydra/launcher=basic", "cache.slots=64,1", "trace.tokens=50",
                 f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "top-k" in err and "cache.slots=1" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_bad_launcher_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-m", "hydra/launcher=nope", "policy=lru,fifo", f"out={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "hydra/launcher" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_collect_reports_failed_jobs(tmp_path: Path) -> None:
    for job, overrides in ((0, "- policy=lru\n"), (1, "- policy=fifo\n")):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(overrides)
    (tmp_path / "0" / "summary.json").write_text('{"policy": "lru", "tokens_per_s": 2.0}')
    (tmp_path / "1" / ERROR_FILE).write_text("trace x: damaged\n")
    table = collect(tmp_path)
    assert table["policy"].tolist() == ["lru", "fifo"]
    assert table["error"].tolist() == ["", "trace x: damaged"]


def test_slurm_launcher_is_configured() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert "submitit" in launcher._target_ and "Slurm" in launcher._target_
    assert launcher.gpus_per_node == 0 and launcher.timeout_min == 60
    assert launcher.array_parallelism == 64


def test_sweep_records_its_plan_and_job_states(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    assert main(["-m", "hydra/launcher=basic", "policy=lru,fifo", "trace.tokens=100",
                 f"out={out}"]) == 0
    plan = read_plan(out)
    # (where the config has an event-log level, sweep jobs add log=steps: sim.cli.quiet_log)
    assert [[o for o in job if o != "log=steps"] for job in plan["jobs"]] == [
        ["policy=lru", "trace.tokens=100"], ["policy=fifo", "trace.tokens=100"]]
    assert states(out) == {0: ("ok", ""), 1: ("ok", "")}
    table = pd.read_csv(out / "sweep.csv")
    assert table["status"].tolist() == ["ok", "ok"]


def test_failed_and_missing_jobs_are_marked_collected_and_resumed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Job 1 fails inside its run (its trace has no lookahead for gate-lookahead), job 2 is
    taken away as if killed before it finished: the table marks both, collect rebuilds it, and
    resume reruns exactly those two (job 0 is not touched) once the trace is fixed."""
    from moe_offload_lab.traces.cli import main as moe_trace

    trace = tmp_path / "t.parquet"
    assert moe_trace(["synth", "--tokens", "150", "--lookahead", "0", "--quiet", "-o",
                      str(trace)]) == 0
    out = tmp_path / "sweep"
    assert main(["-m", "hydra/launcher=basic", "policy=lru,gate-lookahead,fifo",
                 f"trace.path={trace}", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert "1 of 3 jobs failed (jobs 1)" in err and f"sweep resume {out}" in err
    import shutil

    shutil.rmtree(out / "2")  # as if the job never ran
    (out / "sweep.csv").unlink()
    assert main(["sweep", "collect", str(out)]) == 2
    table = pd.read_csv(out / "sweep.csv")
    assert table["status"].tolist() == ["ok", "failed", "missing"]
    assert "lookahead" in table["error"][1] and table["error"][2] == "never ran"
    first = (out / "0" / "summary.json").stat().st_mtime_ns
    assert moe_trace(["synth", "--tokens", "150", "--lookahead", "1", "--quiet", "-o",
                      str(trace)]) == 0
    capsys.readouterr()
    assert main(["sweep", "resume", str(out)]) == 0
    assert "resuming" in capsys.readouterr().out
    table = pd.read_csv(out / "sweep.csv")
    assert table["status"].tolist() == ["ok", "ok", "ok"] and table["error"].isna().all()
    assert (out / "0" / "summary.json").stat().st_mtime_ns == first  # not rerun
    assert main(["sweep", "resume", str(out)]) == 0  # nothing left to do


@pytest.mark.parametrize(("args", "needle"), [
    (["sweep"], "usage"),
    (["sweep", "collect", "/nonexistent/sweep"], "no such sweep folder"),
    (["sweep", "resume", "{tmp}"], "no sweep.json"),
    (["sweep", "resume", "{tmp}", "policy=lru"], "only Hydra overrides"),
])
def test_sweep_command_errors_are_one_line(args: list[str], needle: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    if "only Hydra" in needle:
        write_plan(tmp_path, ["-m", "policy=lru"], [["policy=lru"]])
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moe-sim: error:") and needle in err and "\n" not in err
