"""Replica weight copies on per-rank ingress links that yield to the all-to-all.

Each rank has one ingress link carrying one copy at a time, first come first served. A copy of
``expert_bytes`` from ``src`` to ``dst`` takes ``latency + bytes / bandwidth`` of *link time*
(NVLink inside a node, InfiniBand across). Dispatch and combine own the links while they run:
replica copies pause during every all-to-all phase and resume after it (PROBE's phase-locked
co-scheduling; for other policies an optimistic assumption, the all-to-all never slowed by a
copy). So copy progress is counted on an **open clock** that stops during the all-to-all phases.

Copies are bookkept, not simulated as SimPy processes: the engine records each closed
(all-to-all) interval as it happens and asks, when a layer's experts start, when each rank's
copies for that layer land. Because the links are FIFO and the closed intervals up to that
moment are known, the answer is exact; a copy still running then finishes during the rank's wait,
before the next all-to-all (the layer's combine starts only when every rank is done).
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
from moe_offload_lab.sim.cluster.config import ClusterSpec


class ReplicaLinks:
    """Per-rank ingress links, the closed (all-to-all) intervals, and every copy's record."""

    COLUMNS = ("step", "layer", "expert", "src", "dst", "bytes", "issued_s", "start_s", "end_s",
               "link_s")

    def __init__(self, cluster: ClusterSpec, expert_bytes: int) -> None:
        self.cluster = cluster
        self.expert_bytes = expert_bytes
        ranks = cluster.ranks
        self._closed_start: list[float] = []  # real start of each closed interval
        self._closed_open: list[float] = []  # open-clock value at each closed interval
        self._closed_len: list[float] = []
        self._closed_total = 0.0
        self._free = [0.0] * ranks  # open-clock time each link finishes its processed copies
        self._queue: list[list[int]] = [[] for _ in range(ranks)]  # unprocessed copy ids, FIFO
        self._rows: list[list[Any]] = []  # step, layer, expert, src, dst, issued, start, end
        self._last: dict[tuple[int, int], int] = {}  # (layer, dst) -> last copy id of its plan

    # ---- the all-to-all phases -----------------------------------------------------------------
    def close(self, start_s: float, end_s: float) -> None:
        """Record that the links are taken by an all-to-all over ``[start_s, end_s)``."""
        if end_s <= start_s:
            return
        self._closed_open.append(start_s - self._closed_total)
        self._closed_start.append(start_s)
        self._closed_len.append(end_s - start_s)
        self._closed_total += end_s - start_s

    def open_at(self, t: float) -> float:
        """Open-clock value at real time ``t`` (closed time before ``t`` removed)."""
        i = bisect.bisect_right(self._closed_start, t) - 1
        if i < 0:
            return t
        before = self._closed_start[i] - self._closed_open[i]  # closed time before interval i
        return t - before - min(self._closed_len[i], t - self._closed_start[i])

    # ---- copies ------------------------------------------------------------------------------
    def copy(self, step: int, layer: int, expert: int, src: int, dst: int,
             issued_s: float) -> None:
        """Queue a copy of ``expert``'s weights (for ``layer``) onto ``dst``."""
        index = len(self._rows)
        self._rows.append([step, layer, expert, src, dst, issued_s, 0.0, 0.0])
        self._queue[dst].append(index)
        self._last[(layer, dst)] = index

    def forget(self, layer: int) -> None:
        """A new plan for ``layer`` replaces the old one: its copies no longer gate the layer
        (copies already queued still run and are recorded)."""
        for dst in range(self.cluster.ranks):
            self._last.pop((layer, dst), None)

    def duration_s(self, src: int, dst: int) -> float:
        """Link time of one copy."""
        c = self.cluster
        return c.link_latency_s(src, dst) + self.expert_bytes / c.link_bytes_per_s(src, dst)

    def _process(self, dst: int, upto: int) -> None:
        """Place queued copies of ``dst`` on the open clock, in order, up to copy ``upto``."""
        queue = self._queue[dst]
        while queue and queue[0] <= upto:
            row = self._rows[queue.pop(0)]
            start = max(self.open_at(row[5]), self._free[dst])
            row[6] = start
            row[7] = self._free[dst] = start + self.duration_s(row[3], dst)

    def backlog_s(self, now: float) -> np.ndarray:
        """Open link time each rank owes, at ``now``, to the copies queued so far: ``[ranks]``
        (copies issued later than ``now`` counted as if they started at once)."""
        now_open = self.open_at(now)
        out = [max(free - now_open, 0.0) for free in self._free]
        if not any(self._queue):
            return np.array(out)
        for dst, queue in enumerate(self._queue):
            if not queue:
                continue
            ready = [i for i in queue if self._rows[i][5] <= now]
            if ready:
                self._process(dst, ready[-1])
            owed = sum(self.duration_s(self._rows[i][3], dst) for i in queue)
            out[dst] = max(self._free[dst] - now_open, 0.0) + owed
        return np.array(out)

    def ready_s(self, layer: int, now: float) -> np.ndarray:
        """When each rank's copies for ``layer``'s current plan have landed (``now`` if none or
        already done); ``now`` is the layer's expert start, after its dispatch: ``[ranks]``."""
        ready = np.full(self.cluster.ranks, now)
        now_open = self.open_at(now)
        for dst in range(self.cluster.ranks):
            last = self._last.get((layer, dst))
            if last is None:
                continue
            self._process(dst, last)
            end = self._rows[last][7]
            if end > now_open:
                ready[dst] = now + (end - now_open)
        return ready

    # ---- records -----------------------------------------------------------------------------
    def finish(self) -> None:
        """Place every copy still queued (the run is over: no more closed intervals)."""
        for dst in range(self.cluster.ranks):
            if self._queue[dst]:
                self._process(dst, self._queue[dst][-1])

    def _to_real(self, values: np.ndarray, starts: bool) -> np.ndarray:
        """Open-clock values to real times (a start at a closed interval's edge begins after
        it; an end there is before it)."""
        opens = np.asarray(self._closed_open)
        total = np.r_[0.0, np.cumsum(self._closed_len)]
        index = np.searchsorted(opens, values, side="right" if starts else "left")
        return values + total[index]

    def records(self) -> np.ndarray:
        """Every copy: ``[copies, 10]`` rows in :attr:`COLUMNS` order, times real seconds
        (``link_s``: the link time it took, all-to-all pauses excluded)."""
        self.finish()
        if not self._rows:
            return np.zeros((0, len(self.COLUMNS)))
        rows = np.array(self._rows, dtype=np.float64)  # [n, 8]
        start = self._to_real(rows[:, 6], starts=True)
        end = self._to_real(rows[:, 7], starts=False)
        size = np.full(len(rows), float(self.expert_bytes))
        return np.column_stack([rows[:, :5], size, rows[:, 5], start, end,
                                rows[:, 7] - rows[:, 6]])

    def __len__(self) -> int:
        return len(self._rows)
