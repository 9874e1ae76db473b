"""Event-log levels (``log=full|steps|summary``): folding keeps the step table and the summary.

The rows are folded many times per run here (``fold_rows`` set tiny), with prefetches that are
used after their rows were folded, cancellations, chunked copies and continuous batching.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.policies.toy_traces import make_trace
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.eventlog import EventLog
from moe_offload_lab.sim.metrics import step_frame, summarize
from moe_offload_lab.sim.run import RunConfig, simulate
from moe_offload_lab.sim.workload import ContinuousBatcher
from moe_offload_lab.traces.errors import ConfigError
from sim_testing import HW, spec


def _run(name: str, log: str, *, continuous: bool = False, chunk_mb: float = 0,
         sample_rows: int = 400):
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = make_trace(model, 200, requests=5, seed=4, lookahead=(1, 2, 3), lookahead_error=0.4)
    batcher = ContinuousBatcher(trace, 2000.0, 3, chunk=8, seed=1) if continuous else None
    engine = Engine(model, trace, build_policy(name), HW, 12, batch=2, batcher=batcher,
                    chunk_mb=chunk_mb, log=log, sample_rows=sample_rows)
    return engine.run()


def _summary(result) -> dict:  # noqa: ANN001
    steps = result.step_table if result.step_table is not None else step_frame(result.events)
    return summarize(result.events, steps, result.totals)


@pytest.fixture
def tiny_config() -> dict:
    from moe_offload_lab.sim.cli import compose
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose(["policy=gate-lookahead", "trace.tokens=300",
                                           "model=switch-base-8"]), resolve=True)


@pytest.fixture(autouse=True)
def tiny_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EventLog, "fold_rows", 37)


@pytest.mark.parametrize("name", ["lru", "gate-lookahead", "lookahead-budgeted", "cost-aware"])
@pytest.mark.parametrize("case", [{}, {"continuous": True}, {"chunk_mb": 0.7}])
def test_folded_levels_keep_the_step_table_and_summary(name: str, case: dict) -> None:
    full = _run(name, "full", **case)
    for level in ("steps", "summary"):
        folded = _run(name, level, **case)
        assert folded.rows == len(full.events) and folded.makespan_s == full.makespan_s
        pd.testing.assert_frame_equal(folded.step_table, step_frame(full.events),
                                      check_exact=True)
        want, got = summarize(full.events), _summary(folded)
        # stall seconds are summed fold by fold: equal up to rounding
        assert got.pop("stall_s") == pytest.approx(want.pop("stall_s"), rel=1e-12, abs=1e-15)
        assert got == want


def test_prefetch_used_after_its_row_was_folded() -> None:
    full = _run("gate-lookahead", "full")
    folded = _run("gate-lookahead", "summary")
    details = full.events["detail"].astype(str)
    assert (details == "prefetch_used").sum() > 0
    assert folded.totals["used"] == int((details == "prefetch_used").sum())
    assert len(folded.events) == 0  # summary keeps no rows


def test_steps_keeps_whole_steps_at_an_even_stride() -> None:
    full = _run("lookahead-budgeted", "full", chunk_mb=0.7)
    kept = _run("lookahead-budgeted", "steps", chunk_mb=0.7, sample_rows=400)
    assert 0 < len(kept.events) <= 400
    steps = np.unique(kept.events["step"].to_numpy())
    stride = int(steps[1] - steps[0])
    assert stride > 1 and (steps % stride == 0).all()
    # exactly the full log's rows of those steps, details updated after folding included
    same = full.events[full.events["step"].isin(steps)].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept.events.reset_index(drop=True), same, check_exact=True)


def test_full_keeps_every_row_and_no_step_table() -> None:
    result = _run("lru", "full")
    assert result.step_table is None and result.totals is None
    assert result.rows == len(result.events)


def test_unknown_level_is_a_config_error(tiny_config: dict) -> None:
    with pytest.raises(ConfigError, match="log must be one of"):
        simulate(RunConfig.from_dict({**tiny_config, "log": "verbose"}))


def test_simulate_with_steps_matches_full(tiny_config: dict) -> None:
    full = simulate(RunConfig.from_dict({**tiny_config, "log": "full"}))
    steps = simulate(RunConfig.from_dict({**tiny_config, "log": "steps"}))
    pd.testing.assert_frame_equal(steps.steps, full.steps, check_exact=True)
    a = {k: v for k, v in full.summary.items() if k not in ("sim_wall_s", "log", "stall_s")}
    b = {k: v for k, v in steps.summary.items() if k not in ("sim_wall_s", "log", "stall_s")}
    assert a == b
