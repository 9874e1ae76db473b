"""The validation's error math and combined timeline on hand-made inputs."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from moe_offload_lab.hw.validate.accuracy import add_errors, overall, relative_error, step_stats_ms
from moe_offload_lab.hw.validate.report import combined_trace, markdown


def test_relative_error():
    assert relative_error(12.0, 10.0) == pytest.approx(0.2)
    assert relative_error(8.0, 10.0) == pytest.approx(-0.2)
    assert math.isnan(relative_error(1.0, 0.0))


def test_errors_per_cell_and_overall():
    table = pd.DataFrame({
        "policy": ["a", "b", "c", "d"], "cache": ["f0.5"] * 4, "slots": [4] * 4,
        "batch": [1, 1, 16, 16],
        "hw_step_ms_mean": [10.0, 10.0, 20.0, 4.0], "sim_step_ms_mean": [11.0, 7.0, 20.0, 5.0],
        "hw_step_ms_p99": [20.0, 20.0, 40.0, 8.0], "sim_step_ms_p99": [20.0, 30.0, 30.0, 8.0]})
    out = add_errors(table)
    assert out["rel_err_step_ms_mean"].tolist() == pytest.approx([0.1, -0.3, 0.0, 0.25])
    assert out["abs_rel_err_step_ms_mean"].tolist() == pytest.approx([0.1, 0.3, 0.0, 0.25])
    summary = overall(out)
    assert summary["cells"] == 4
    assert summary["median_abs_rel_err_step_ms_mean"] == pytest.approx(0.175)  # (0.1+0.25)/2
    assert summary["max_abs_rel_err_step_ms_mean"] == pytest.approx(0.3)
    assert summary["median_abs_rel_err_step_ms_p99"] == pytest.approx(0.125)  # 0,0,.25,.5
    text = markdown(out, summary, "hand-made")
    assert "17.5%" in text and "| a | f0.5 | 4 | 1 |" in text and "+10.0%" in text


def test_step_stats():
    steps = pd.DataFrame({"latency_s": [0.001] * 99 + [0.101]})
    stats = step_stats_ms(steps)
    assert stats["step_ms_mean"] == pytest.approx(2.0)
    assert 1.0 < stats["step_ms_p99"] <= 101.0


def _events(offset: float) -> pd.DataFrame:
    return pd.DataFrame({
        "kind": ["step", "copy", "compute"], "start_s": [0.0, offset, offset + 0.001],
        "end_s": [0.01, offset + 0.001, offset + 0.002], "step": [0, 0, 0], "layer": [-1, 0, 0],
        "expert": [-1, 3, 3], "bytes": [0, 100, 0], "resource": ["none", "link", "gpu"],
        "detail": ["step", "demand", "miss"], "count": [1, 0, 1]})


def test_combined_trace_has_both_pids():
    trace = combined_trace(_events(0.0), _events(0.002), "lru-f0.5-b1")
    pids = {e["pid"] for e in trace["traceEvents"]}
    assert pids == {0, 1}
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert any(n.startswith("hardware") for n in names) and any(n.startswith("simulator")
                                                                 for n in names)
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in complete} == {0, 1} and len(complete) == 6


def test_median_run_picks_the_middle_repeat():
    from moe_offload_lab.hw.validate.cells import SideResult
    from moe_offload_lab.hw.validate.run import median_run

    def run(ms):
        return SideResult(pd.DataFrame(), pd.DataFrame({"latency_s": [ms / 1e3] * 3}), {})

    runs = [run(5.0), run(900.0), run(4.0)]
    assert median_run(runs) is runs[0]
    assert median_run(runs[:2]) is runs[0]  # the lower middle of an even count
    assert median_run([runs[1]]) is runs[1]
