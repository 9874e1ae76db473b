"""Chrome trace (``chrome://tracing`` / Perfetto) JSON of a run, one track per resource kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

_TRACKS = {"copy": 1, "compute": 2, "stall": 3, "policy": 4, "step": 5}
_NAMES = {1: "h2d copies", 2: "compute", 3: "stalls", 4: "policy", 5: "steps"}


def chrome_trace(events: pd.DataFrame, max_events: int = 50_000) -> dict[str, Any]:
    """The first ``max_events`` rows (by start time) as complete ("X") events.

    Tracks (``tid``): copies, compute (CPU-placed experts on their own track), stalls, policy
    calls, steps. Times in microseconds.
    """
    frame = events.sort_values("start_s", kind="stable").head(max_events)
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
            "otherData": {"truncated": bool(len(events) > max_events)}}


def write_chrome_trace(events: pd.DataFrame, path: str | Path, max_events: int = 50_000) -> Path:
    """Write :func:`chrome_trace` as JSON; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(chrome_trace(events, max_events)), encoding="utf-8")
    return path
