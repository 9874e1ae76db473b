"""``moe-sim`` end to end (in process) and its error cases."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sim.cli import main


def test_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    status = main(["trace.tokens=300", f"out={out}", "policy=gate-lookahead",
                   "hardware=h100-sxm", "cache.fraction=0.25", "batch=2"])
    assert status == 0
    assert "tokens_per_s" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hardware"] == "h100-sxm" and summary["policy"] == "gate-lookahead"
    assert summary["tokens"] == 300 and summary["capacity_slots"] == 64
    assert summary["tokens_per_s"] > 0
    steps = pd.read_parquet(out / "steps.parquet")
    assert len(steps) == summary["steps"]
    events = pd.read_parquet(out / "events.parquet")
    assert len(events) == summary["events"]
    timeline = json.loads((out / "timeline.json").read_text())
    assert any(e.get("ph") == "X" for e in timeline["traceEvents"])


@pytest.mark.parametrize("overrides,message", [
    (["cache.slots=1"], "top-k"),
    (["cache.fraction=0"], "fraction"),
    (["hardware=no-such-gpu"], "hardware"),
    (["policy=no-such-policy"], "policy"),
    (["model=no-such-model"], "model"),
    (["hardware.link_gb_per_s=0"], "link_gb_per_s"),
    (["batch=0"], "batch"),
    (["trace.tokens=0"], "tokens"),
])
def test_errors_are_one_line(overrides: list[str], message: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*overrides, "trace.tokens=50", f"out={tmp_path}"]
                if "trace.tokens=0" not in overrides else [*overrides, f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moe-sim: error:") and message in err
    assert len(err.splitlines()) == 1


def test_compare_experiment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    assert main(["experiment=compare", "trace.tokens=300", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    labels = ["on-demand", "gate-lookahead", "prescope", "oracle-prefetch", "all-resident"]
    for label in labels:
        assert label in printed
    table = pd.read_csv(out / "compare.csv")
    assert table["policy"].tolist() == labels
    assert list(table.columns) == ["policy", "tpot_ms_mean", "tpot_ms_p99", "tokens_per_s",
                                   "hit_rate", "stall_s", "speedup"]
    row = table.set_index("policy")
    assert row.loc["on-demand", "speedup"] == 1.0
    # the all-resident bound: every access hits, nothing stalls, fastest of all
    assert row.loc["all-resident", "hit_rate"] == 1.0 and row.loc["all-resident", "stall_s"] == 0
    assert row.loc["all-resident", "tokens_per_s"] >= table["tokens_per_s"].max() - 1e-9
    assert (out / "compare.md").read_text().startswith("| policy |")
    summaries = json.loads((out / "summaries.json").read_text())
    assert [s["label"] for s in summaries] == labels
    assert all(s["tokens"] == 300 and s["hardware"] == "rtx4090" for s in summaries)
    assert summaries[-1]["capacity_slots"] == 256 and summaries[0]["capacity_slots"] == 128


def test_compare_bad_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment=compare", "trace.tokens=50", "compare.baseline=nope",
                 f"out={tmp_path}"]) == 2
    assert "baseline" in capsys.readouterr().err
