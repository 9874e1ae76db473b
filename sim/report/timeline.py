"""A timeline excerpt: a few consecutive steps of one run's ``events.parquet`` as a Gantt chart.

Rows (top to bottom): host-to-device copies, GPU compute, CPU experts, stalls and policy calls;
colours tell the kind of copy (demand, prefetch used or wasted, cancelled) and the outcome of an
expert's compute (hit, prefetched, fetched on demand). Alternating shading marks the steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Patch
from moe_offload_lab.sim.report.sources import Source
from moe_offload_lab.sim.report.style import Section, new_figure
from moe_offload_lab.traces.errors import ConfigError

# (row, legend label, kind, resource or None, details or None)
CATEGORIES = (
    ("copies (link)", "demand copy", "copy", None, ("demand", "stream")),
    ("copies (link)", "prefetch, used", "copy", None, ("prefetch_used",)),
    ("copies (link)", "prefetch, wasted", "copy", None, ("prefetch",)),
    ("copies (link)", "cancelled prefetch", "copy", None, ("cancelled",)),
    ("GPU compute", "non-expert compute", "compute", "gpu", ("other",)),
    ("GPU compute", "expert, cache hit", "compute", "gpu", ("hit", "prefetch_hit")),
    ("GPU compute", "expert, after a copy", "compute", "gpu", ("miss", "inflight")),
    ("CPU experts", "expert on the CPU", "compute", "cpu", None),
    ("stalls", "stall (waiting for copies)", "stall", None, None),
    ("policy", "policy decision", "policy", None, None),
)
MIN_WIDTH = 0.002  # drawn width of the shortest event, as a share of the window
ROWS = tuple(dict.fromkeys(c[0] for c in CATEGORIES))


def pick_run(runs: pd.DataFrame) -> pd.Series | None:
    """The run to draw: one with event files, preferring prefetching, CPU experts and stalls
    (the most to see), then the first."""
    have = runs[[bool(d) and (Path(d) / "events.parquet").is_file() for d in runs["dir"]]]
    if have.empty:
        return None

    def score(row: pd.Series) -> tuple[bool, bool, bool]:
        def pos(key: str) -> bool:
            value = row.get(key)
            return bool(value is not None and value == value and value > 0)

        return pos("prefetch_copies"), pos("cpu_expert_ms_per_step"), pos("stall_s")

    scores = [score(row) for _, row in have.iterrows()]
    return have.iloc[max(range(len(scores)), key=lambda i: (scores[i], -i))]


def _window(events: pd.DataFrame, n_steps: int) -> pd.DataFrame:
    """The step rows of ``n_steps`` consecutive decode steps from the middle of the run."""
    steps = events[events["kind"] == "step"].sort_values("start_s")
    decode = steps[steps["count"] <= steps["count"].median()] if len(steps) > 2 else steps
    middle = len(steps) // 2
    start = steps.index.get_loc(decode.index[len(decode) // 2]) if len(decode) else middle
    start = min(start, max(0, len(steps) - n_steps))
    return steps.iloc[start:start + n_steps]


def find_run(runs: pd.DataFrame, label: str) -> pd.Series:
    """The run labelled ``label``: an exact label, else the one run whose label contains it
    (case-insensitive). ConfigError when there is none, several, or it has no event log."""
    exact = runs[runs["label"] == label]
    if exact.empty:
        exact = runs[runs["label"].str.lower().str.contains(label.lower(), regex=False)]
    labels = ", ".join(repr(x) for x in runs["label"])
    if exact.empty:
        raise ConfigError(f"--timeline-run {label!r}: no such run (runs: {labels})")
    if len(exact) > 1:
        raise ConfigError(f"--timeline-run {label!r} matches {len(exact)} runs "
                          f"({', '.join(repr(x) for x in exact['label'])}); give a full label")
    run = exact.iloc[0]
    if not run["dir"] or not (Path(run["dir"]) / "events.parquet").is_file():
        raise ConfigError(f"--timeline-run {label!r}: run {run['label']!r} has no "
                          f"events.parquet")
    return run


def timeline_section(source: Source, n_steps: int = 2, run_label: str | None = None
                     ) -> Section | str:
    """The Gantt chart of ``n_steps`` steps of run ``run_label`` (see :func:`find_run`), by
    default of the most eventful run with an event log."""
    run = pick_run(source.runs) if run_label is None else find_run(source.runs, run_label)
    if run is None:
        return "no run folder with events.parquet"
    events = pd.read_parquet(Path(run["dir"]) / "events.parquet")
    window = _window(events, n_steps)
    if window.empty:
        return f"run {run['label']} has no steps"
    t0, t1 = float(window["start_s"].min()), float(window["end_s"].max())
    inside = events[(events["end_s"] > t0) & (events["start_s"] < t1)
                    & (events["kind"] != "step")]
    fig = new_figure(12, 4.8)
    ax = fig.subplots()
    colors = sns.color_palette("tab10", len(CATEGORIES))
    ypos = {row: i for i, row in enumerate(ROWS)}
    for i, step in enumerate(window.itertuples()):
        if i % 2 == 0:
            ax.axvspan((step.start_s - t0) * 1e3, (step.end_s - t0) * 1e3, color="0.93", zorder=0)
        ax.text(((step.start_s + step.end_s) / 2 - t0) * 1e3, -0.75, f"step {step.step}",
                ha="center", va="bottom", fontsize=8)
    rows, handles = [], []
    for (row, label, kind, resource, details), color in zip(CATEGORIES, colors, strict=True):
        mask = inside["kind"] == kind
        if resource is not None:
            mask &= inside["resource"] == resource
        if details is not None:
            mask &= inside["detail"].isin(details)
        part = inside[mask]
        if part.empty:
            continue
        start = (np.clip(part["start_s"].to_numpy(), t0, t1) - t0) * 1e3  # [n] ms
        width = (np.clip(part["end_s"].to_numpy(), t0, t1) - t0) * 1e3 - start  # [n] ms
        shown = np.maximum(width, MIN_WIDTH * (t1 - t0) * 1e3)  # short events stay visible
        ax.broken_barh(list(zip(start, shown, strict=True)), (ypos[row] - 0.38, 0.76),
                       facecolors=color, linewidth=0, zorder=2)
        handles.append(Patch(facecolor=color, label=label))
        rows.append({"row": row, "event": label, "events": len(part),
                     "busy ms": float(width.sum()), "share of window %":
                     100 * float(width.sum()) / ((t1 - t0) * 1e3)})
    ax.set_yticks(range(len(ROWS)), ROWS)
    ax.set_ylim(len(ROWS) - 0.4, -1.0)
    ax.set_xlim(0, (t1 - t0) * 1e3)
    ax.set(xlabel=f"simulated time since {t0:.3f} s (ms)", ylabel="",
           title=f"Timeline excerpt: {len(window)} steps of run {run['label']}")
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    text = (f"Steps {int(window['step'].min())}-{int(window['step'].max())} of run "
            f"{run['label']} from its events.parquet, drawn as a Gantt chart: copies over the "
            f"host-to-device link, compute on the GPU and the CPU, stalls and policy calls each "
            f"on their own row (shaded bands mark steps). Busy times are clipped to the window "
            f"and overlapping copies add up; events shorter than 0.2% of the window are drawn "
            f"at that width so they stay visible.")
    return Section("timeline", "Timeline excerpt", text, pd.DataFrame(rows), fig)
