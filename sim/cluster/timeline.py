"""Chrome trace / Perfetto JSON of a cluster run: one track per rank, one for replica copies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from moe_offload_lab.traces.atomic import write_text


def cluster_chrome_trace(rank_events: list[tuple[int, str, float, float, int, int]],
                         transfers: pd.DataFrame, ranks: int,
                         sampled_steps: list[int]) -> dict[str, Any]:
    """``rank_events`` rows ``(rank, name, start_s, end_s, step, layer)`` of the sampled steps
    and every replica copy of those steps; times in microseconds."""
    out: list[dict[str, Any]] = [
        {"name": "thread_name", "ph": "M", "pid": 0, "tid": r, "args": {"name": f"rank {r}"}}
        for r in range(ranks)]
    out.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": ranks,
                "args": {"name": "replica copies"}})
    for rank, name, start, end, step, layer in rank_events:
        out.append({"name": f"L{layer} {name}", "cat": name, "ph": "X", "pid": 0, "tid": rank,
                    "ts": start * 1e6, "dur": (end - start) * 1e6,
                    "args": {"step": step, "layer": layer}})
    keep = set(sampled_steps)
    if len(transfers):
        for row in transfers[transfers["step"].isin(keep)].itertuples(index=False):
            out.append({"name": f"L{row.layer} E{row.expert} {row.src}->{row.dst}",
                        "cat": "replica", "ph": "X", "pid": 0, "tid": ranks,
                        "ts": row.start_s * 1e6, "dur": (row.end_s - row.start_s) * 1e6,
                        "args": {"step": int(row.step), "bytes": int(row.bytes),
                                 "dst": int(row.dst)}})
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"sampled_steps": sorted(keep)}}


def write_cluster_trace(trace: dict[str, Any], path: str | Path) -> Path:
    """Write the JSON atomically; returns the path."""
    return write_text(path, json.dumps(trace))
