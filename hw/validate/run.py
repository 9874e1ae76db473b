"""A whole validation: profile, model, trace, every cell on both sides, errors, report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from moe_offload_lab.hw.calibrate.devices import resolve_device
from moe_offload_lab.hw.validate import accuracy
from moe_offload_lab.hw.validate.cells import CellRunner, SideResult, simulate_cell
from moe_offload_lab.hw.validate.matrix import (
    ValidationConfig,
    cache_sizes,
    cells,
    make_trace,
    model_spec,
)
from moe_offload_lab.hw.validate.report import combined_trace, write_report
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.sim.hardware import HardwareProfile, load_hardware
from moe_offload_lab.traces.errors import ConfigError
from tqdm.auto import tqdm

Measure = Callable[..., SideResult]

# a quick calibration when no profile is given (settings: conf/hw/validate.yaml calibrate:)
QUICK_CALIBRATION = {"tokens": [1, 2, 4, 8, 16, 32, 64, 128, 256], "batches": [1, 4, 16, 64, 256],
                     "contexts": [64], "reference_context": 64, "repeats": 5, "warmup": 1,
                     "policies": [], "progress": False}


@dataclass
class Validation:
    """The per-cell table (errors added), the overall figures and the written files."""

    table: pd.DataFrame
    overall: dict[str, Any]
    paths: list[Path]
    profile: HardwareProfile


def _profile(cfg: ValidationConfig, out: Path, device: str) -> HardwareProfile:
    if cfg.profile:
        return load_hardware(cfg.profile)
    from moe_offload_lab.hw.calibrate.run import CalibrationConfig, calibrate

    settings = {**QUICK_CALIBRATION, **(cfg.calibrate or {})}
    calib = CalibrationConfig.from_dict({**settings, "device": device, "model": cfg.model,
                                         "model_overrides": cfg.model_overrides or {},
                                         "out": str(out / "profile.yaml")})
    calibrate(calib)
    return load_hardware(str(out / "profile.yaml"))


def median_run(runs: list[SideResult]) -> SideResult:
    """The run whose mean step latency is the median of the repeats (the lower middle one for
    an even count): one burst of contention on a shared machine does not make a cell."""
    means = [float(r.steps["latency_s"].mean()) if len(r.steps) else 0.0 for r in runs]
    order = sorted(range(len(runs)), key=means.__getitem__)
    return runs[order[(len(runs) - 1) // 2]]


def validate(cfg: ValidationConfig, measure: Measure | None = None) -> Validation:
    """Run the matrix; ``measure`` runs a cell in the executor (a stand-in in unit tests; None:
    :func:`~hw.validate.cells.measure_cell` through a :class:`~hw.validate.cells.CellRunner`,
    so one expert store and model serve every cell, repeat and the warm-up of this call, and
    are released when it returns)."""
    if measure is None:
        with CellRunner() as runner:
            return _validate(cfg, runner.measure)
    return _validate(cfg, measure)


def _validate(cfg: ValidationConfig, measure: Measure) -> Validation:
    cfg.check()
    device = resolve_device(cfg.device)
    spec = model_spec(cfg)
    for name in cfg.policies:
        build_policy(name)  # unknown names fail before anything runs
    out = Path(cfg.out) if cfg.out else Path("outputs/hw/validate") / time.strftime(
        "%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    hardware = _profile(cfg, out, device.type if device.index is None else str(device))
    sizes = cache_sizes(cfg, spec, hardware)
    trace = make_trace(cfg, spec)
    matrix = cells(cfg, sizes)
    if not 0 <= cfg.timeline_cell < len(matrix):
        raise ConfigError(f"timeline_cell must be in [0, {len(matrix)}), got {cfg.timeline_cell}")
    if cfg.warmup and matrix:  # one untimed executor run: thread pools, allocator, kernels
        first = matrix[0]
        measure(spec, trace, first.policy, first.slots, first.batch, str(device),
                prefill=cfg.prefill, seed=cfg.seed, hardware=hardware)
    rows, timeline = [], None
    for i, cell in enumerate(tqdm(matrix, desc="validate", disable=not cfg.progress,
                                  leave=False)):
        runs = [measure(spec, trace, cell.policy, cell.slots, cell.batch, str(device),
                        prefill=cfg.prefill, seed=cfg.seed, hardware=hardware)
                for _ in range(cfg.repeats)]
        hw_side = median_run(runs)
        sim_side = simulate_cell(spec, trace, cell.policy, hardware, cell.slots, cell.batch,
                                 prefill=cfg.prefill)
        hw_stats, sim_stats = accuracy.step_stats_ms(hw_side.steps), \
            accuracy.step_stats_ms(sim_side.steps)
        rows.append({"policy": cell.policy, "cache": cell.cache_label, "slots": cell.slots,
                     "batch": cell.batch, "steps": len(hw_side.steps),
                     **{f"hw_{k}": v for k, v in hw_stats.items()},
                     **{f"sim_{k}": v for k, v in sim_stats.items()},
                     **{f"hw_{k}": v for k, v in accuracy.breakdown_ms(hw_side.steps).items()},
                     **{f"sim_{k}": v for k, v in accuracy.breakdown_ms(sim_side.steps).items()},
                     "hw_hit_rate": hw_side.summary.get("hit_rate"),
                     "sim_hit_rate": sim_side.summary.get("hit_rate"),
                     "hw_h2d_bytes": hw_side.summary.get("h2d_bytes"),
                     "sim_h2d_bytes": sim_side.summary.get("h2d_bytes")})
        if i == cfg.timeline_cell:
            timeline = combined_trace(hw_side.events, sim_side.events, cell.label,
                                      cfg.timeline_events)
    table = accuracy.add_errors(pd.DataFrame(rows))
    overall = accuracy.overall(table)
    twin = device.type == "cpu"
    header = (f"{spec.name} ({spec.num_moe_layers} MoE layers), profile {hardware.name}, "
              f"device {device}, {trace.num_tokens} tokens")
    if twin:
        header += ("\n\nCPU twin: the measured times are CPU times of host copies and host "
                   "compute; this checks the pipeline, not the simulator's GPU accuracy.")
    extra = {"model": spec.name, "moe_layers": spec.num_moe_layers, "device": str(device),
             "cpu_twin": twin, "profile": hardware.name, "tokens": trace.num_tokens,
             "timeline_cell": matrix[cfg.timeline_cell].label, "repeats": cfg.repeats}
    paths = write_report(table, overall, out, header, timeline, extra)
    return Validation(table, overall, paths, hardware)
