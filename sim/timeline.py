"""Chrome trace (``chrome://tracing`` / Perfetto) JSON of a run, one track per resource kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from moe_offload_lab.traces.atomic import write_text

_TRACKS = {"copy": 1, "compute": 2, "stall": 3, "policy": 4, "step": 5}
_NAMES = {1: "h2d copies", 2: "compute", 3: "stalls", 4: "policy", 5: "steps"}


def sample_steps(events: pd.DataFrame, max_events: int) -> tuple[pd.DataFrame, int]:
    """At most ``max_events`` rows, whole steps kept at an even stride across the run.

    Returns the rows and the stride (1: nothing dropped). Rows outside any step (``step`` -1)
    are kept when there is room. A single step longer than the cap is cut at the cap.
    """
    if len(events) <= max_events:
        return events, 1
    if max_events <= 0:
        return events.head(0), 0
    step = events["step"].to_numpy()  # [N]
    n_steps = int(step.max()) + 1 if len(step) else 0
    stride = -(-len(events) // max_events)  # ceil(N / cap): fewer whole steps won't fit
    while stride < max(n_steps, 1):
        kept = events[(step >= 0) & (step % stride == 0)]
        if len(kept) <= max_events:
            return kept, stride
        stride += max(1, stride // 4)
    return events[step == 0].head(max_events), max(n_steps, 1)


def chrome_trace(events: pd.DataFrame, max_events: int = 50_000) -> dict[str, Any]:
    """Complete ("X") events of the run, capped at ``max_events``: long runs are sampled whole
    step by whole step at an even stride (:func:`sample_steps`), so the file shows the start,
    middle and end of the run; ``otherData`` says the stride.

    Tracks (``tid``): copies, compute (CPU-placed experts on their own track), stalls, policy
    calls, steps. Times in microseconds.
    """
    sampled, stride = sample_steps(events, max_events)
    frame = sampled.sort_values("start_s", kind="stable")
    out: list[dict[str, Any]] = [
        {"name": "thread_name", "ph": "M", "pid": 0, "tid": tid, "args": {"name": name}}
        for tid, name in {**_NAMES, 6: "cpu experts"}.items()
    ]
    for row in frame.itertuples(index=False):
        kind = str(row.kind)
        tid = _TRACKS.get(kind, 0)
        if kind == "compute" and str(row.resource) == "cpu":
            tid = 6
        name = kind if row.expert < 0 else f"L{row.layer} E{row.expert}"
        out.append({"name": name, "cat": f"{kind}:{row.detail}", "ph": "X", "pid": 0, "tid": tid,
                    "ts": row.start_s * 1e6, "dur": (row.end_s - row.start_s) * 1e6,
                    "args": {"step": int(row.step), "layer": int(row.layer),
                             "detail": str(row.detail), "bytes": int(row.bytes)}})
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"truncated": bool(len(events) > max_events), "step_stride": stride,
                          "events_total": int(len(events)), "events_written": int(len(frame))}}


def write_chrome_trace(events: pd.DataFrame, path: str | Path, max_events: int = 50_000) -> Path:
    """Write :func:`chrome_trace` as JSON; returns the path."""
    return write_text(path, json.dumps(chrome_trace(events, max_events)))
