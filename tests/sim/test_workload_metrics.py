"""Static batching, metrics from the event log, and the Chrome timeline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.policies.toy_traces import make_trace
from moe_offload_lab.sim.cli import compose
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.eventlog import EventLog
from moe_offload_lab.sim.metrics import latency_metrics, summarize
from moe_offload_lab.sim.run import RunConfig, simulate
from moe_offload_lab.sim.timeline import chrome_trace
from moe_offload_lab.sim.workload import static_batches
from omegaconf import OmegaConf
from sim_testing import HW, spec


def test_static_batches_cover_every_row_once() -> None:
    model = spec()
    trace = make_trace(model, 50, requests=5, seed=2)
    for batch in (1, 2, 5):
        schedule = static_batches(trace, batch)
        rows = np.sort(np.concatenate(schedule))
        assert np.array_equal(rows, np.arange(50))
        for step in schedule:  # a decode step holds at most one token per request
            if (trace.phase[step] == 1).all():
                assert len(step) <= batch
                assert len(set(trace.request_id[step].tolist())) == len(step)
    assert sum(len(s) for s in static_batches(trace, 2, prefill=False)) == \
        int((trace.phase == 1).sum())


def test_prefetch_metrics_by_hand() -> None:
    log = EventLog()
    log.add("copy", 0.0, 1.0, 0, 1, 3, 100, "link", "prefetch_used")
    log.add("copy", 1.0, 2.0, 0, 1, 4, 100, "link", "prefetch")
    log.add("copy", 2.0, 2.5, 0, 1, 5, 50, "link", "cancelled")
    log.add("copy", 2.5, 3.5, 0, 1, 6, 100, "link", "demand")
    for how in ("hit", "prefetch_hit", "miss", "hit"):
        log.add("compute", 3.5, 3.6, 0, 1, 1, 0, "gpu", how, 1)
    log.add("stall", 2.0, 3.5, 0, 1)
    log.add("step", 0.0, 4.0, 0, count=1)
    s = summarize(log.to_frame())
    assert s["h2d_bytes"] == 350 and s["wasted_prefetch_bytes"] == 150
    assert s["prefetch_precision"] == 1 / 3 and s["prefetch_recall"] == 1 / 2
    assert s["hit_rate"] == 3 / 4 and s["stall_s"] == 1.5 and s["tokens_per_s"] == 0.25


def test_timeline_tracks_and_cap() -> None:
    model = spec()
    trace = make_trace(model, 20, seed=1)
    events = Engine(model, trace, build_policy("gate-lookahead"), HW, 8).run().events
    data = chrome_trace(events, max_events=40)
    spans = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert 0 < len(spans) <= 40 and data["otherData"]["truncated"]
    assert {e["tid"] for e in spans} >= {1, 2}


def test_timeline_samples_whole_steps_across_the_run() -> None:
    model = spec()
    trace = make_trace(model, 60, seed=2)
    events = Engine(model, trace, build_policy("lru"), HW, 8).run().events
    cap = len(events) // 4
    data = chrome_trace(events, max_events=cap)
    spans = [e for e in data["traceEvents"] if e["ph"] == "X"]
    stride = data["otherData"]["step_stride"]
    assert len(spans) <= cap and stride >= 4
    steps = {e["args"]["step"] for e in spans}
    assert all(s % stride == 0 for s in steps) and max(steps) > events["step"].max() // 2
    for s in steps:  # every kept step is whole
        kept = sum(1 for e in spans if e["args"]["step"] == s)
        assert kept == int((events["step"] == s).sum())
    assert chrome_trace(events, max_events=len(events))["otherData"]["step_stride"] == 1


def test_tpot_ttft_by_hand() -> None:
    # two requests: 2 prompt + 2 decode tokens each; batch 1 -> 6 steps
    request_id = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    phase = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    schedule = [np.array([0, 1]), np.array([2]), np.array([3]), np.array([4, 5]),
                np.array([6]), np.array([7])]
    bounds = [(0.0, 0.010), (0.010, 0.012), (0.012, 0.016), (0.016, 0.030), (0.030, 0.032),
              (0.032, 0.034)]
    steps = pd.DataFrame({"start_s": [b[0] for b in bounds], "end_s": [b[1] for b in bounds]})
    m = latency_metrics(steps, schedule, request_id, phase)
    assert m["decode_steps"] == 4 and m["requests"] == 2
    assert m["tpot_ms_mean"] == pytest.approx((2 + 4 + 2 + 2) / 4)
    assert m["tpot_ms_p50"] == pytest.approx(2.0)
    assert m["ttft_ms_mean"] == pytest.approx((10 + 14) / 2)  # request 1 starts at 16 ms
    m = latency_metrics(steps, schedule, request_id, phase, arrival_s={0: 0.0, 1: 0.0})
    assert m["ttft_ms_mean"] == pytest.approx((10 + 30) / 2)


def test_summary_has_headline_metrics() -> None:
    cfg = RunConfig.from_dict({"model": {**OmegaConf.to_container(compose([]).model)},
                               "hardware": OmegaConf.to_container(compose([]).hardware),
                               "policy": OmegaConf.to_container(compose([]).policy),
                               "trace": {"tokens": 300}, "batch": 2})
    summary = simulate(cfg).summary
    for key in ("tpot_ms_mean", "tpot_ms_p50", "tpot_ms_p99", "ttft_ms_mean", "tokens_per_s",
                "hit_rate", "h2d_bytes", "stall_s", "prefetch_precision", "prefetch_recall",
                "wasted_prefetch_bytes", "sim_wall_s", "events"):
        assert key in summary, key
    assert summary["tpot_ms_p99"] >= summary["tpot_ms_p50"] > 0
    assert summary["ttft_ms_mean"] > 0 and summary["tokens"] == 300
