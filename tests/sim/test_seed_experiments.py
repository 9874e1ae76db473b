"""The seed papers' experiments (conf/experiment/{prophet,prescope}.yaml): each composes, runs on
a tiny configuration and writes compare.csv with its labels and the paper's headline beside the
simulator's; the grid and headline settings of ``compare`` they use. Predictors are trained for a
few steps into a temporary cache (the experiments' own recipes train for a minute). The main job
(experiment=compare, every run fitting its GPU) is tested in test_sim_cli.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from moe_offload_lab.sim.cli import compose, main, run_config
from moe_offload_lab.sim.compare import headline_lines, jobs, run_comparison
from moe_offload_lab.traces.errors import ConfigError
from sim_testing import quick_predictor_training


@pytest.fixture(autouse=True)
def quick_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quick_predictor_training(tmp_path, monkeypatch)


def _table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "compare.csv")


def test_prophet_experiment_runs_each_model_and_batch(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "prophet"
    assert main(["experiment=prophet", "trace.tokens=300", "compare.grid.batch=[1,4]",
                 f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "Prophet's headline" in printed and "paper 1.50x-10.40x" in printed
    table = _table(out)
    assert set(table["label"]) == {"on-demand", "lru", "prophet", "oracle"}
    assert set(zip(table["model"], table["batch"], strict=True)) == {
        (m, b) for m in ("mixtral-8x7b", "gpt-oss-20b") for b in (1, 4)}
    assert (table.loc[table["label"] == "on-demand", "speedup"] == 1.0).all()
    assert "paper 1.50x-10.40x" in (out / "compare.md").read_text()
    assert (out / "compare.png").stat().st_size > 0
    assert len(list((out / "runs").iterdir())) == len(table)  # one folder per job


def test_prescope_experiment_runs_each_batch(tmp_path: Path) -> None:
    cfg = run_config(compose(["experiment=prescope", "trace.tokens=600",
                              "compare.grid.batch=[4,8]"]))
    table, summaries, _ = run_comparison(cfg)
    assert table["label"].unique().tolist() == ["moe-infinity", "lru", "fiddler",
                                                "presched-greedy", "presched", "prescope"]
    assert table["batch"].unique().tolist() == [4, 8]
    assert {s["hardware"] for s in summaries} == {"rtx3090"}
    lines = headline_lines(cfg, table)
    assert lines[0] == "PreScope's headline beside the simulator's:"
    assert "paper 2.41x" in lines[1] and "batch 4" in lines[1] and "batch 8" in lines[1]
    row = table[(table["batch"] == 4)].set_index("label")
    expected = row.loc["prescope", "tokens_per_s"] / row.loc["moe-infinity", "tokens_per_s"]
    assert f"batch 4 {expected:.2f}x" in lines[1]  # throughput: higher is better
    latency = row.loc["moe-infinity", "tpot_ms_mean"] / row.loc["prescope", "tpot_ms_mean"]
    assert f"batch 4 {latency:.2f}x" in lines[2]  # latency: inverted


def test_grid_models_replace_the_model_and_keep_their_keys() -> None:
    cfg = run_config(compose([
        "experiment=prophet", "compare.grid.batch=[2]",
        "compare.grid.model=[mixtral-8x7b,{name:gpt-oss-20b,expert_bytes_per_param:0.5}]"]))
    todo = jobs(cfg)
    assert len(todo) == 2 * 4
    oss = [j for j in todo if j.point["model"] == "gpt-oss-20b"]
    assert all(j.cfg.model["expert_bytes_per_param"] == 0.5 and j.cfg.batch == 2 for j in oss)
    assert oss[0].key == "on-demand model=gpt-oss-20b batch=2"


@pytest.mark.parametrize("grid, message", [
    ("compare.grid.batch=[0]", "positive integers"),
    ("+compare.grid.hardware=[rtx3090]", "unknown key"),
    ("compare.grid.model=[no-such-model]", "no-such-model"),
])
def test_bad_grids_are_one_clear_error(grid: str, message: str) -> None:
    cfg = run_config(compose(["experiment=prophet", grid]))
    with pytest.raises(ConfigError, match=message):
        jobs(cfg)
