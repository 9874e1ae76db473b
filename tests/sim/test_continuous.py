"""Continuous batching with Poisson arrivals (sim.workload.ContinuousBatcher) in the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.policies.toy_traces import make_trace
from moe_offload_lab.sim.cli import main
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.workload import ContinuousBatcher, static_batches
from moe_offload_lab.traces.errors import ConfigError
from sim_testing import HW, check_log, spec


def _trace():  # noqa: ANN202
    return make_trace(spec(), 120, requests=6, seed=3)


@pytest.mark.parametrize("rate,max_batch,chunk", [
    (float("inf"), 1, None), (float("inf"), 3, None), (50.0, 2, 4), (1e3, 4, 1), (0.5, 8, None)])
def test_every_token_once_and_arrivals_respected(rate: float, max_batch: int,
                                                 chunk: int | None) -> None:
    model, trace = spec(), _trace()
    batcher = ContinuousBatcher(trace, rate, max_batch, chunk=chunk, seed=1)
    engine = Engine(model, trace, build_policy("gate-lookahead"), HW, 8, batcher=batcher,
                    check=True)
    result = engine.run()
    rows = np.concatenate(engine.schedule)
    assert np.array_equal(np.sort(rows), np.arange(trace.num_tokens))  # each exactly once
    check_log(result.events, model.expert_bytes)
    starts = result.events[result.events["kind"] == "step"]["start_s"].to_numpy()  # [S]
    assert len(starts) == len(engine.schedule) == result.steps
    seen: set[int] = set()
    for s, step_rows in enumerate(engine.schedule):
        reqs = trace.request_id[step_rows].tolist()
        assert len(set(reqs)) <= max_batch
        for r in set(reqs):
            if r not in seen:  # a request's first step starts no earlier than its arrival
                seen.add(r)
                assert starts[s] >= batcher.arrival_by_id[r] - 1e-12
        decode = step_rows[trace.phase[step_rows] == 1]
        assert len(set(trace.request_id[decode].tolist())) == len(decode)  # 1 token/request
        if chunk is not None:
            prompt = step_rows[trace.phase[step_rows] == 0]
            counts = np.bincount(trace.request_id[prompt], minlength=1) if len(prompt) else []
            assert max(counts, default=0) <= chunk


def test_arrivals_are_poisson_and_ordered() -> None:
    trace = make_trace(spec(), 2000, requests=400, seed=0)
    batcher = ContinuousBatcher(trace, 10.0, 4, seed=0)
    arrivals = batcher.arrival_s
    assert arrivals[0] == 0 and np.all(np.diff(arrivals) >= 0)
    assert np.mean(np.diff(arrivals)) == pytest.approx(0.1, rel=0.15)


@pytest.mark.parametrize("max_batch", [1, 2, 3, 6])
def test_infinite_rate_matches_static_coverage(max_batch: int) -> None:
    trace = _trace()
    continuous = ContinuousBatcher(trace, float("inf"), max_batch).offline_schedule()
    static = static_batches(trace, max_batch)
    assert np.array_equal(np.sort(np.concatenate(continuous)), np.sort(np.concatenate(static)))
    assert np.array_equal(continuous[0], static[0])  # the first B prompts together
    assert max(len(set(trace.request_id[s].tolist())) for s in continuous) == \
        min(max_batch, len(np.unique(trace.request_id)))
    if max_batch == 1:  # one request at a time: exactly the static schedule
        assert len(continuous) == len(static)
        assert all(np.array_equal(a, b) for a, b in zip(continuous, static, strict=True))
    else:  # a finished request's slot is refilled at once: never more steps than static
        assert len(continuous) <= len(static)


def test_idle_gaps_wait_for_arrivals() -> None:
    model, trace = spec(), _trace()
    batcher = ContinuousBatcher(trace, 0.01, 2, seed=0)  # ~100 s between arrivals
    result = Engine(model, trace, build_policy("lru"), HW, 8, batcher=batcher).run()
    assert result.makespan_s >= batcher.arrival_s[-1]


def test_bad_continuous_settings() -> None:
    trace = _trace()
    with pytest.raises(ConfigError, match="max_batch"):
        ContinuousBatcher(trace, 1.0, 0)
    with pytest.raises(ConfigError, match="rate_per_s"):
        ContinuousBatcher(trace, 0.0, 2)
    with pytest.raises(ConfigError, match="chunk"):
        ContinuousBatcher(trace, 1.0, 2, chunk=0)


def test_cli_continuous(tmp_path: Path) -> None:
    out = tmp_path / "c"
    assert main(["workload=continuous", "workload.rate_per_s=inf", "workload.max_batch=4",
                 "workload.chunk=32", "trace.tokens=400", f"out={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workload"] == "continuous" and summary["tokens"] == 400
    assert summary["ttft_ms_mean"] > 0 and summary["tpot_ms_mean"] > 0


def _interleaved(trace):  # noqa: ANN001, ANN202
    """The same trace with each request's decode rows interleaved across requests (how a
    recorder writes a batch: processing order), prompts first; returns it and its row map."""
    rid, phase, pos = trace.request_id, trace.phase, trace.position
    order = np.lexsort((rid, pos, phase))  # prompts by position, then decode rows round-robin
    return trace.select(order), order


@pytest.mark.parametrize("batch", [1, 3])
def test_interleaved_requests_batch_like_contiguous_ones(batch: int) -> None:
    trace = _trace()
    mixed, order = _interleaved(trace)
    assert len(np.flatnonzero(np.diff(mixed.request_id) != 0)) > 6  # really interleaved
    same = [order[rows] for rows in static_batches(mixed, batch)]  # back to the original rows
    assert all(np.array_equal(a, b) for a, b in zip(same, static_batches(trace, batch),
                                                    strict=True))
    cont = ContinuousBatcher(mixed, float("inf"), batch).offline_schedule()
    ref = ContinuousBatcher(trace, float("inf"), batch).offline_schedule()
    assert len(cont) == len(ref)
    assert all(np.array_equal(order[a], b) for a, b in zip(cont, ref, strict=True))
