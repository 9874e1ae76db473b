"""Workloads: which trace rows each simulated step runs.

Static batching only (continuous batching with arrivals is not built yet): requests are taken
``batch`` at a time in trace order; a group runs one prefill step holding every prompt token of
its requests (when the trace has any), then decode steps, step ``j`` holding the ``j``-th decode
token of every request of the group that still has one.
"""

from __future__ import annotations

import numpy as np

from traces.errors import ConfigError
from traces.format import Trace


def static_batches(trace: Trace, batch: int, prefill: bool = True) -> list[np.ndarray]:
    """The schedule: per step, the trace rows [B] it runs, in order."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    request_id = np.asarray(trace.request_id)
    phase = np.asarray(trace.phase)
    # requests are contiguous runs of rows (the trace format guarantees it)
    starts = np.flatnonzero(np.r_[True, request_id[1:] != request_id[:-1]])  # [R]
    ends = np.r_[starts[1:], len(request_id)]  # [R]
    schedule: list[np.ndarray] = []
    for g in range(0, len(starts), batch):
        group = range(g, min(g + batch, len(starts)))
        prompt_rows = [np.arange(starts[r], ends[r])[phase[starts[r]:ends[r]] == 0]
                       for r in group]
        decode_rows = [np.arange(starts[r], ends[r])[phase[starts[r]:ends[r]] != 0]
                       for r in group]
        if prefill:
            rows = np.concatenate(prompt_rows) if prompt_rows else np.zeros(0, np.int64)
            if rows.size:
                schedule.append(rows.astype(np.int64))  # [sum of prompt lengths]
        longest = max((len(d) for d in decode_rows), default=0)
        for j in range(longest):
            rows = np.array([d[j] for d in decode_rows if j < len(d)], dtype=np.int64)  # [<=B]
            schedule.append(rows)
    return schedule
