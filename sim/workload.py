"""Workloads: which trace rows each simulated step runs.

Static batching (:func:`static_batches`): requests are taken ``batch`` at a time in trace order; a
group runs one prefill step holding every prompt token of its requests (when the trace has any),
then decode steps, step ``j`` holding the ``j``-th decode token of every request of the group that
still has one.

Continuous batching (:class:`ContinuousBatcher`): requests arrive as a Poisson process (in trace
order) and join the running batch at step boundaries once arrived, up to ``max_batch`` running
requests; each runs its prompt (all of it in one step, or ``chunk`` tokens per step) then one
decode token per step, and leaves when done. The schedule depends on simulated time, so the
engine asks for each step when the previous one ends.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace


def static_batches(trace: Trace, batch: int, prefill: bool = True) -> list[np.ndarray]:
    """The schedule: per step, the trace rows [B] it runs, in order."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    phase = np.asarray(trace.phase)
    requests, _ = request_rows(trace)
    schedule: list[np.ndarray] = []
    for g in range(0, len(requests), batch):
        group = requests[g:g + batch]
        prompt_rows = [rows[phase[rows] == 0] for rows in group]
        decode_rows = [rows[phase[rows] != 0] for rows in group]
        if prefill:
            rows = np.concatenate(prompt_rows) if prompt_rows else np.zeros(0, np.int64)
            if rows.size:
                schedule.append(rows.astype(np.int64))  # [sum of prompt lengths]
        longest = max((len(d) for d in decode_rows), default=0)
        for j in range(longest):
            rows = np.array([d[j] for d in decode_rows if j < len(d)], dtype=np.int64)  # [<=B]
            schedule.append(rows)
    return schedule


def request_rows(trace: Trace) -> tuple[list[np.ndarray], list[Any]]:
    """Each request's rows [n_r] in trace order, requests in order of first appearance; and their
    ids. A request's rows need not be contiguous: a recorder writes decode rows in processing
    order, interleaved across the requests of a batch."""
    request_id = np.asarray(trace.request_id)  # [T]
    change = np.flatnonzero(np.r_[True, request_id[1:] != request_id[:-1]])  # run starts
    if len(np.unique(request_id[change])) == len(change):  # each request one run (the common case)
        ends = np.r_[change[1:], len(request_id)]
        return ([np.arange(a, b) for a, b in zip(change, ends, strict=True)],
                request_id[change].tolist())
    order = np.argsort(request_id, kind="stable")  # [T]: grouped by id, trace order within
    ordered = request_id[order]
    bounds = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])
    groups = sorted((order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)),
                    key=lambda rows: rows[0])
    return groups, [request_id[rows[0]].item() for rows in groups]


def check_continuous(rate_per_s: Any, max_batch: Any, chunk: Any) -> None:
    """Raise ConfigError unless the continuous-batching settings are usable (see
    :class:`ContinuousBatcher`); also called before a run starts (``sim.run.prepare``)."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"workload.max_batch must be a positive integer, got {max_batch!r}")
    if isinstance(rate_per_s, bool) or not isinstance(rate_per_s, (int, float)) \
            or not rate_per_s > 0:
        raise ConfigError(f"workload.rate_per_s must be > 0, got {rate_per_s!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int)
                              or chunk < 1):
        raise ConfigError(f"workload.chunk must be a positive integer or null, got {chunk!r}")


class ContinuousBatcher:
    """Continuous batching with Poisson arrivals over the requests of ``trace`` (trace order).

    ``rate_per_s``: mean arrivals per simulated second (``inf``: all arrive at time 0);
    ``max_batch``: most requests running at once; ``chunk``: prompt tokens per request per step
    (``None``: the whole prompt in one step); ``prefill=False`` drops prompt tokens.
    ``arrival_s[r]`` is the arrival time of the ``r``-th request (keyed by its request id in
    :attr:`arrival_by_id`).
    """

    def __init__(self, trace: Trace, rate_per_s: float, max_batch: int, *,
                 chunk: int | None = None, prefill: bool = True, seed: int = 0) -> None:
        check_continuous(rate_per_s, max_batch, chunk)
        requests, ids = request_rows(trace)
        phase = np.asarray(trace.phase)
        self.max_batch, self.chunk = max_batch, chunk
        # per request: its prompt rows then its decode rows, in order
        self.prompt = [rows[phase[rows] == 0] if prefill else np.zeros(0, np.int64)
                       for rows in requests]
        self.decode = [rows[phase[rows] != 0] for rows in requests]
        n = len(requests)
        if math.isinf(rate_per_s):
            self.arrival_s = np.zeros(n)
        else:
            gaps = np.random.default_rng(seed).exponential(1.0 / rate_per_s, n)  # [R]
            self.arrival_s = np.cumsum(gaps) - gaps[0] if n else gaps  # first one at time 0
        self.arrival_by_id = dict(zip(ids, self.arrival_s.tolist(), strict=True))
        self._next = 0  # next request to admit
        self._running: list[list] = []  # [request, prompt done, decode done]

    def done(self) -> bool:
        """Every request has finished."""
        return self._next >= len(self.prompt) and not self._running

    def next_arrival_s(self) -> float:
        """When the next not-yet-admitted request arrives (``inf`` when none is left)."""
        return float(self.arrival_s[self._next]) if self._next < len(self.prompt) else math.inf

    def next_step(self, now: float) -> np.ndarray:
        """The rows of the step starting at ``now`` (empty: nothing to run until an arrival)."""
        while (self._next < len(self.prompt) and len(self._running) < self.max_batch
               and self.arrival_s[self._next] <= now):
            self._running.append([self._next, 0, 0])
            self._next += 1
        parts: list[np.ndarray] = []
        still: list[list] = []
        for state in self._running:
            r, p_done, d_done = state
            prompt, decode = self.prompt[r], self.decode[r]
            if p_done < len(prompt):
                take = len(prompt) - p_done if self.chunk is None else \
                    min(self.chunk, len(prompt) - p_done)
                parts.append(prompt[p_done:p_done + take])
                state[1] = p_done + take
            elif d_done < len(decode):
                parts.append(decode[d_done:d_done + 1])
                state[2] = d_done + 1
            if state[1] < len(prompt) or state[2] < len(decode):
                still.append(state)
        self._running = still
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def offline_schedule(self, step_s: float = 1.0) -> list[np.ndarray]:
        """The schedule if every step took ``step_s`` (idle gaps jump to the next arrival)."""
        schedule, now = [], 0.0
        while not self.done():
            rows = self.next_step(now)
            if rows.size:
                schedule.append(rows)
                now += step_s
            else:
                now = max(now, self.next_arrival_s())
        return schedule
