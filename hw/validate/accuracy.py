"""Error math of a validation: relative error per cell, median and worst absolute error overall.

Relative error of a cell: ``(simulated - measured) / measured`` (positive: the simulator is
slower than the hardware). The overall figure is the median over cells of its absolute value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

METRICS = ("step_ms_mean", "step_ms_p99")


def relative_error(simulated: float, measured: float) -> float:
    """``(simulated - measured) / measured`` (nan when ``measured`` is not positive)."""
    if not measured or measured <= 0 or not np.isfinite(measured):
        return float("nan")
    return (simulated - measured) / measured


def add_errors(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` (columns ``hw_<metric>`` and ``sim_<metric>`` per :data:`METRICS`)
    with ``rel_err_<metric>`` and ``abs_rel_err_<metric>`` added."""
    out = table.copy()
    for metric in METRICS:
        hw_v = out[f"hw_{metric}"].to_numpy(dtype=float)  # [cells]
        sim_v = out[f"sim_{metric}"].to_numpy(dtype=float)  # [cells]
        rel = np.array([relative_error(s, h) for s, h in zip(sim_v, hw_v, strict=True)])
        out[f"rel_err_{metric}"] = rel
        out[f"abs_rel_err_{metric}"] = np.abs(rel)
    return out


def overall(table: pd.DataFrame) -> dict[str, Any]:
    """Median and worst absolute relative error per metric over the cells (nan cells skipped)."""
    out: dict[str, Any] = {"cells": int(len(table))}
    for metric in METRICS:
        values = table[f"abs_rel_err_{metric}"].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        out[f"median_abs_rel_err_{metric}"] = float(np.median(values)) if len(values) else None
        out[f"max_abs_rel_err_{metric}"] = float(values.max()) if len(values) else None
    return out


def breakdown_ms(steps: pd.DataFrame) -> dict[str, float]:
    """Mean ms per step of each :data:`sim.metrics.BREAKDOWN` part, and ``unaccounted_ms``: the
    step latency no part covers (on the executor: its own bookkeeping between events)."""
    from moe_offload_lab.sim.metrics import BREAKDOWN

    out = {f"{name[:-2]}_ms": float(steps[name].mean() * 1e3) if len(steps) else float("nan")
           for name in BREAKDOWN if name in steps}
    if len(steps) and all(name in steps for name in BREAKDOWN):
        parts = steps[list(BREAKDOWN)].sum(axis=1)  # [S]
        out["unaccounted_ms"] = float((steps["latency_s"] - parts).clip(lower=0).mean() * 1e3)
    return out


def step_stats_ms(steps: pd.DataFrame) -> dict[str, float]:
    """Mean and p99 step latency (ms) of a :func:`sim.metrics.step_frame` table."""
    ms = steps["latency_s"].to_numpy(dtype=float) * 1e3  # [S]
    if not len(ms):
        return {"step_ms_mean": float("nan"), "step_ms_p99": float("nan")}
    return {"step_ms_mean": float(ms.mean()), "step_ms_p99": float(np.percentile(ms, 99))}
