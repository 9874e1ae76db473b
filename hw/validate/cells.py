"""One cell on each side: the executor (:func:`hw.replay.run_replay`) and the simulator
(:class:`sim.engine.Engine` with the calibrated profile), same spec, trace, policy, capacity and
batch. Each side returns its event log, step table and summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.sim.metrics import latency_metrics, step_frame, summarize
from moe_offload_lab.sim.workload import static_batches
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec


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


def _replay() -> Any:
    """:mod:`hw.replay`, imported lazily (ConfigError when the executor is not installed)."""
    try:
        import moe_offload_lab.hw.replay as replay
    except ImportError as exc:  # the executor is not installed in this checkout
        raise ConfigError(f"the executor (hw.replay.run_replay) is not available: {exc}") from None
    return replay


def measure_cell(spec: ModelSpec, trace: Trace, policy: str, slots: int, batch: int,
                 device: str, prefill: bool = True, seed: int = 0,
                 hardware: HardwareProfile | None = None, *, assets: Any = None) -> SideResult:
    """The executor's run of one cell (imports :mod:`hw.replay` lazily); ``hardware`` is the
    profile the policies plan with (the calibrated one, as in the simulator); ``assets``: a
    :class:`hw.replay.ReplayAssets` to reuse (None: the run builds its own store and model)."""
    run_replay = _replay().run_replay
    extra: dict[str, Any] = {} if hardware is None else {"hardware": hardware}
    result = run_replay(spec, trace, policy, capacity_slots=slots, batch=batch, device=device,
                        prefill=prefill, seed=seed, assets=assets, **extra)
    steps = getattr(result, "steps", None)
    if steps is None:
        steps = step_frame(result.events)
    return SideResult(result.events, steps, dict(result.summary))


class CellRunner:
    """:func:`measure_cell` for one validation run, with one set of replay assets (expert store
    and model) built on the first cell and reused by every later cell, repeat and warm-up of the
    same spec, device and seed (a different one replaces it: one set in memory at a time).
    :meth:`close` drops them and hands cached memory back; ``builds`` counts the builds."""

    def __init__(self) -> None:
        self.assets: Any = None
        self.builds = 0

    def measure(self, spec: ModelSpec, trace: Trace, policy: str, slots: int, batch: int,
                device: str, prefill: bool = True, seed: int = 0,
                hardware: HardwareProfile | None = None) -> SideResult:
        """:func:`measure_cell` with the run's shared assets."""
        replay = _replay()
        if self.assets is None or not self.assets.matches(spec, device, seed):
            self.close()
            self.assets = replay.build_assets(spec, device, seed)
            self.builds += 1
        return measure_cell(spec, trace, policy, slots, batch, device, prefill=prefill,
                            seed=seed, hardware=hardware, assets=self.assets)

    def close(self) -> None:
        """Drop the assets and release the memory they held."""
        if self.assets is not None:
            device = self.assets.device
            self.assets = None
            _replay().release_memory(device)

    def __enter__(self) -> CellRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
