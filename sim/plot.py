"""Figures of a simulation: step latency over the run and where the time went (seaborn).

``steps.png`` of one run (:func:`plot_steps`) and ``compare.png`` of a comparison
(:func:`plot_comparison`). Both are written atomically; matplotlib runs headless (Agg canvas).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from moe_offload_lab.sim.metrics import BREAKDOWN
from moe_offload_lab.traces.atomic import atomic_path

_LABELS = {"non_expert_s": "non-expert (attention, router)", "gpu_expert_s": "GPU experts",
           "cpu_expert_s": "CPU experts", "stall_s": "stall (waiting for copies)",
           "policy_s": "policy decisions"}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _breakdown_long(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """Mean milliseconds per step of each breakdown part, long form: [by, part, ms]."""
    means = frame.groupby(by, sort=False)[list(BREAKDOWN)].mean() * 1e3
    long = means.reset_index().melt(id_vars=by, var_name="part", value_name="ms")
    long["part"] = long["part"].map(_LABELS)
    return long


def plot_steps(steps: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Step latency against simulated time (left) and the mean breakdown of a step (right)."""
    path = Path(path)
    sns.set_theme(style="whitegrid", context="paper")
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    data = steps.assign(latency_ms=steps["latency_s"] * 1e3, time_s=steps["start_s"])
    sns.lineplot(data=data, x="time_s", y="latency_ms", ax=left, linewidth=0.8)
    left.set(xlabel="simulated time (s)", ylabel="step latency (ms)", title="step latency")
    long = _breakdown_long(data.assign(run="mean step"), "run")
    sns.barplot(data=long, x="part", y="ms", ax=right, color=sns.color_palette()[1])
    right.set(xlabel="", ylabel="ms per step", title="where a step's time went")
    right.tick_params(axis="x", labelrotation=30)
    for label in right.get_xticklabels():
        label.set_horizontalalignment("right")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_comparison(steps_by_run: dict[str, pd.DataFrame], summaries: list[dict[str, Any]],
                    path: str | Path, title: str = "") -> Path:
    """Per run: mean and p99 time per output token (left), mean step breakdown (right)."""
    path = Path(path)
    sns.set_theme(style="whitegrid", context="paper")
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    tpot = pd.DataFrame([{"run": s["label"], "statistic": stat, "ms": s.get(f"tpot_ms_{stat}")}
                         for s in summaries for stat in ("mean", "p99")])
    sns.barplot(data=tpot, x="run", y="ms", hue="statistic", ax=left)
    left.set(xlabel="", ylabel="time per output token (ms)", title="decode latency")
    frames = [frame.assign(run=label) for label, frame in steps_by_run.items()]
    long = _breakdown_long(pd.concat(frames, ignore_index=True), "run")
    sns.barplot(data=long, x="run", y="ms", hue="part", ax=right)
    right.set(xlabel="", ylabel="ms per step", title="where a step's time went")
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=25)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    right.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
