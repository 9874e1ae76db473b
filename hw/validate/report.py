"""The validation report: ``validation.csv``, ``validation.png`` (seaborn), ``validation.md``
and ``timeline.json`` (one Perfetto/Chrome trace: pid 0 = hardware, pid 1 = simulator). Every
file is written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from moe_offload_lab.sim.timeline import chrome_trace
from moe_offload_lab.traces.atomic import atomic_path, write_text

SIDES = {0: "hardware (executor)", 1: "simulator"}


def combined_trace(hw_events: pd.DataFrame, sim_events: pd.DataFrame, label: str = "",
                   max_events: int = 50_000) -> dict[str, Any]:
    """Both timelines in one Chrome trace: each side's :func:`sim.timeline.chrome_trace` with
    its pid set (0 hardware, 1 simulator), a process name per side, tracks per resource."""
    events: list[dict[str, Any]] = []
    other: dict[str, Any] = {"cell": label}
    for pid, frame in ((0, hw_events), (1, sim_events)):
        one = chrome_trace(frame, max_events)
        events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                       "args": {"name": f"{SIDES[pid]} {label}".strip()}})
        events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
                       "args": {"sort_index": pid}})
        for event in one["traceEvents"]:
            events.append({**event, "pid": pid})
        other[SIDES[pid]] = one["otherData"]
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    """The per-cell table as CSV."""
    return write_text(path, table.to_csv(index=False))


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if pct:
        return f"{value * 100:+.1f}%"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(table: pd.DataFrame, overall: dict[str, Any], header: str) -> str:
    """A short markdown report: the headline errors and one row per cell."""
    lines = [f"# Simulator against executor\n\n{header}\n",
             f"Median absolute error of mean step latency over {overall['cells']} cells: "
             f"**{_fmt(overall['median_abs_rel_err_step_ms_mean'], True).lstrip('+')}** "
             f"(worst {_fmt(overall['max_abs_rel_err_step_ms_mean'], True).lstrip('+')}); "
             f"of p99: {_fmt(overall['median_abs_rel_err_step_ms_p99'], True).lstrip('+')}.\n",
             "| policy | cache | slots | batch | hw mean ms | sim mean ms | err | hw p99 ms | "
             "sim p99 ms | err |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in table.itertuples(index=False):
        lines.append(f"| {row.policy} | {row.cache} | {row.slots} | {row.batch} | "
                     f"{_fmt(row.hw_step_ms_mean)} | {_fmt(row.sim_step_ms_mean)} | "
                     f"{_fmt(row.rel_err_step_ms_mean, True)} | {_fmt(row.hw_step_ms_p99)} | "
                     f"{_fmt(row.sim_step_ms_p99)} | {_fmt(row.rel_err_step_ms_p99, True)} |")
    lines.append("\nRelative error: (simulated - measured) / measured; positive: the simulator "
                 "is slower.")
    parts = [c[3:] for c in table.columns if c.startswith("hw_") and c.endswith("_ms")
             and not c.startswith("hw_step_ms")]
    if parts:
        lines += ["\nWhere a step's time went (mean ms per step over the cells; "
                  "unaccounted: latency no event covers):\n",
                  "| part | hardware | simulator |", "|---|---:|---:|"]
        for part in parts:
            sim = table[f"sim_{part}"].mean() if f"sim_{part}" in table else None
            lines.append(f"| {part.removesuffix('_ms').replace('_', ' ')} | "
                         f"{_fmt(float(table[f'hw_{part}'].mean()))} | "
                         f"{_fmt(None if sim is None else float(sim))} |")
    return "\n".join(lines) + "\n"


def figure(table: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Measured against simulated mean step latency (left, one point per cell, the diagonal
    is exact) and the relative error per cell (right)."""
    sns.set_theme(style="whitegrid", context="paper")
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    data = table.assign(batch=table["batch"].astype(str))
    sns.scatterplot(data=data, x="hw_step_ms_mean", y="sim_step_ms_mean", hue="policy",
                    style="batch", ax=left, s=50)
    values = pd.concat([data["hw_step_ms_mean"], data["sim_step_ms_mean"]]).dropna()
    if len(values):
        lo, hi = float(values.min()) * 0.9, float(values.max()) * 1.1
        left.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--")
    left.set(xlabel="measured mean step (ms)", ylabel="simulated mean step (ms)",
             title="mean step latency")
    long = data.assign(cell=data["cache"] + " b" + data["batch"],
                       err_pct=data["rel_err_step_ms_mean"] * 100)
    sns.barplot(data=long, x="cell", y="err_pct", hue="policy", ax=right)
    right.axhline(0, color="grey", linewidth=0.8)
    right.set(xlabel="cache, batch", ylabel="relative error (%)", title="simulated vs measured")
    right.tick_params(axis="x", labelrotation=30)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_report(table: pd.DataFrame, overall: dict[str, Any], out: Path, header: str,
                 timeline: dict[str, Any] | None, extra: dict[str, Any]) -> list[Path]:
    """Write every file of the report into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_csv(table, out / "validation.csv"),
             figure(table, out / "validation.png", header.splitlines()[0] if header else ""),
             write_text(out / "validation.md", markdown(table, overall, header)),
             write_text(out / "summary.json", json.dumps({**overall, **extra}, indent=2,
                                                         default=str))]
    if timeline is not None:
        paths.append(write_text(out / "timeline.json", json.dumps(timeline)))
    return paths
