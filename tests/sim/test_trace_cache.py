"""Shared synthetic traces (sim/trace_cache.py) and what a sweep job writes (sim/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from moe_offload_lab.sim.cli import checked_run_config, main
from moe_offload_lab.sim.run import simulate
from moe_offload_lab.sim.trace_cache import FOLDER, TraceCache, trace_key
from moe_offload_lab.traces.synthetic import generate


def _summary(result) -> dict:  # noqa: ANN001
    return {k: v for k, v in result.summary.items() if k != "sim_wall_s"}


@pytest.mark.parametrize("policy", ["lru", "gate-lookahead", "history"])
def test_a_shared_trace_gives_the_runs_own_results(policy: str, tmp_path: Path) -> None:
    cfg = checked_run_config([f"policy={policy}", "trace.tokens=300"])
    alone = simulate(cfg)
    writer = TraceCache(tmp_path)
    first = simulate(cfg, writer)
    reader = TraceCache(tmp_path)  # another worker: reads the file
    second = simulate(cfg, reader)
    third = simulate(cfg, reader)  # and its memory
    assert writer.generated == 1 and reader.generated == 0
    for other in (first, second, third):
        assert _summary(other) == _summary(alone)
        pd.testing.assert_frame_equal(other.events, alone.events)


def test_one_file_per_distinct_trace(tmp_path: Path) -> None:
    cache = TraceCache(tmp_path, keep=1)
    a = cache.synthetic("mixtral-8x7b", 100, 0)
    assert cache.synthetic("mixtral-8x7b", 100, 0) is a
    cache.synthetic("mixtral-8x7b", 120, 0)
    cache.synthetic("mixtral-8x7b", 100, 1)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 3 and all(f.endswith(".parquet") for f in files)
    assert len({trace_key("mixtral-8x7b", 100, 0), trace_key("mixtral-8x7b", 100, 1),
                trace_key("mixtral-8x7b", 120, 0), trace_key("qwen3-30b-a3b", 100, 0)}) == 4
    fresh = generate("mixtral-8x7b", tokens=100, seed=0)
    again = TraceCache(tmp_path).synthetic("mixtral-8x7b", 100, 0)
    assert np.array_equal(again.expert_ids, fresh.expert_ids)
    assert np.array_equal(again.gate_weights, fresh.gate_weights)
    assert again.lookahead.keys() == fresh.lookahead.keys()


def test_a_shared_trace_cannot_be_written_into(tmp_path: Path) -> None:
    trace = TraceCache(tmp_path).synthetic("mixtral-8x7b", 50, 0)
    with pytest.raises(ValueError):
        trace.expert_ids[0, 0, 0] = 1


def test_a_damaged_file_is_generated_again(tmp_path: Path) -> None:
    TraceCache(tmp_path).synthetic("mixtral-8x7b", 50, 0)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not parquet")
    cache = TraceCache(tmp_path)
    trace = cache.synthetic("mixtral-8x7b", 50, 0)
    assert cache.generated == 1 and trace.num_tokens == 50
    assert TraceCache(tmp_path).synthetic("mixtral-8x7b", 50, 0).num_tokens == 50


def test_an_unwritable_folder_only_costs_the_sharing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = TraceCache(blocker / "traces")
    assert cache.synthetic("mixtral-8x7b", 40, 0).num_tokens == 40


def test_sweep_jobs_skip_figures_and_timelines_and_share_the_trace(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    assert main(["--multirun", "hydra/launcher=basic", "policy=lru,fifo", "trace.tokens=200",
                 f"out={out}"]) == 0
    for job in ("0", "1"):
        names = {p.name for p in (out / job).iterdir()}
        assert {"summary.json", "steps.parquet", "events.parquet", ".done"} <= names
        assert not names & {"timeline.json", "steps.png"}
    assert not (out / FOLDER).exists()  # every job done: the shared traces are gone
    asked = tmp_path / "asked"
    assert main(["--multirun", "hydra/launcher=basic", "policy=lru", "trace.tokens=200",
                 "outputs.timeline=true", f"out={asked}"]) == 0
    names = {p.name for p in (asked / "0").iterdir()}
    assert "timeline.json" in names and "steps.png" not in names
    one = tmp_path / "one"
    assert main(["policy=lru", "trace.tokens=200", f"out={one}"]) == 0
    assert {"timeline.json", "steps.png"} <= {p.name for p in one.iterdir()}
    quiet = tmp_path / "quiet"
    assert main(["policy=lru", "trace.tokens=200", "outputs.figures=false", f"out={quiet}"]) == 0
    names = {p.name for p in quiet.iterdir()}
    assert "timeline.json" in names and "steps.png" not in names
    summaries = [json.loads((d / "summary.json").read_text()) for d in (out / "0", one)]
    assert summaries[0]["tokens_per_s"] == summaries[1]["tokens_per_s"]


def test_an_unfinished_sweep_keeps_its_traces_for_the_resume(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    assert main(["--multirun", "hydra/launcher=basic", "policy=lru,fifo", "trace.tokens=200",
                 f"out={out}"]) == 0
    (out / "1" / ".done").unlink()  # as if job 1 had been killed
    shared = out / FOLDER
    TraceCache(shared).synthetic("mixtral-8x7b", 200, 0)
    assert main(["sweep", "collect", str(out)]) == 2
    assert len(list(shared.glob("*.parquet"))) == 1
    assert main(["sweep", "resume", str(out)]) == 0
    assert not shared.exists()


@pytest.mark.parametrize("bad", ["outputs.figures=maybe", "outputs.timeline=1",
                                 "+outputs.plots=true"])
def test_a_bad_outputs_value_is_one_line(bad: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    assert main([bad, "trace.tokens=100", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outputs" in err[0]
    assert not out.exists()


def test_sweep_jobs_and_trials_log_steps_unless_told(tmp_path: Path) -> None:
    from moe_offload_lab.sim.cli import compose, quiet_log

    if "log" not in compose([]):
        pytest.skip("no event-log level (log=) in this config")
    assert quiet_log(["policy=lru"], "steps") == ["policy=lru", "log=steps"]
    assert quiet_log(["log=full", "policy=lru"], "steps") == ["log=full", "policy=lru"]
    out = tmp_path / "sweep"
    assert main(["--multirun", "hydra/launcher=basic", "policy=lru", "log=full,summary",
                 "trace.tokens=200", f"out={out}"]) == 0
    logs = [json.loads((out / j / "summary.json").read_text())["log"] for j in ("0", "1")]
    assert logs == ["full", "summary"]
    quiet = tmp_path / "quiet"
    assert main(["--multirun", "hydra/launcher=basic", "policy=lru", "trace.tokens=200",
                 f"out={quiet}"]) == 0
    assert json.loads((quiet / "0" / "summary.json").read_text())["log"] == "steps"
