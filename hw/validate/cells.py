"""One cell on each side: the executor (:func:`hw.replay.run_replay`) and the simulator
(:class:`sim.engine.Engine` with the calibrated profile), same spec, trace, policy, capacity and
batch. Each side returns its event log, step table and summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from policies.config import build_policy
from sim.engine import Engine
from sim.hardware import HardwareProfile
from sim.metrics import latency_metrics, step_frame, summarize
from sim.workload import static_batches
from traces.errors import ConfigError
from traces.format import Trace
from traces.spec import ModelSpec


@dataclass
class SideResult:
    """Events (:mod:`sim.eventlog` columns), steps (:func:`sim.metrics.step_frame`), summary."""

    events: pd.DataFrame
    steps: pd.DataFrame
    summary: dict[str, Any]


def simulate_cell(spec: ModelSpec, trace: Trace, policy: str, hardware: HardwareProfile,
                  slots: int, batch: int, prefill: bool = True) -> SideResult:
    """The simulator's run of one cell."""
    schedule = static_batches(trace, batch, prefill)
    if not schedule:
        raise ConfigError("nothing to run: the trace has no steps")
    engine = Engine(spec, trace, build_policy(policy), hardware, slots, batch, schedule=schedule,
                    prefill=prefill)
    result = engine.run()
    steps = step_frame(result.events)
    summary = {**summarize(result.events),
               **latency_metrics(steps, engine.schedule, trace.request_id, trace.phase),
               "measured_used": engine.compute.measured_used}
    return SideResult(result.events, steps, summary)


def measure_cell(spec: ModelSpec, trace: Trace, policy: str, slots: int, batch: int,
                 device: str, prefill: bool = True, seed: int = 0,
                 hardware: HardwareProfile | None = None) -> SideResult:
    """The executor's run of one cell (imports :mod:`hw.replay` lazily); ``hardware`` is the
    profile the policies plan with (the calibrated one, as in the simulator)."""
    try:
        from hw.replay import run_replay
    except ImportError as exc:  # the executor is not installed in this checkout
        raise ConfigError(f"the executor (hw.replay.run_replay) is not available: {exc}") from None
    extra: dict[str, Any] = {} if hardware is None else {"hardware": hardware}
    result = run_replay(spec, trace, policy, capacity_slots=slots, batch=batch, device=device,
                        prefill=prefill, seed=seed, **extra)
    steps = getattr(result, "steps", None)
    if steps is None:
        steps = step_frame(result.events)
    return SideResult(result.events, steps, dict(result.summary))
