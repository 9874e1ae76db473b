"""The host-to-device link: one SimPy process serving copies one at a time, by priority.

Demand copies (priority 0) go before prefetches (priority 1); ties in submission order. A copy
takes ``latency + bytes / bandwidth`` (the copy's own, lower, bandwidth when its source is slower
than the link: an expert read from NVMe, see :mod:`sim.host`). A queued copy can be cancelled
(dropped lazily) or raised to demand priority; a running one can be cancelled (the link stops at
once and counts the bytes that crossed). One SimPy timeout per copy.

Optional chunking (``chunk_bytes > 0``): a copy crosses in chunks of at most ``chunk_bytes``, each
costing ``latency + chunk / bandwidth`` (every cudaMemcpyAsync pays the per-copy latency). After
each chunk the link looks at its queue; if a copy of strictly higher priority (a demand) waits,
the running one is suspended (it keeps its moved bytes and its sequence number) and goes back into
the queue. A copy's log row spans its first start to its end and records the bytes that moved.
One SimPy timeout per chunk.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import simpy

from sim.eventlog import DETAIL as _DETAIL
from sim.eventlog import KIND, RESOURCE, EventLog

_K_COPY, _R_LINK, _D_CANCELLED = KIND["copy"], RESOURCE["link"], _DETAIL["cancelled"]

DEMAND = 0
PREFETCH = 1


class Copy:
    """One host-to-device copy of an expert (``purpose``: demand, stream or prefetch)."""

    __slots__ = ("key", "num_bytes", "priority", "purpose", "step", "layer", "seq", "state",
                 "start_s", "ready_s", "waiter", "used", "row", "moved", "bytes_per_s")

    def __init__(self, key: int, num_bytes: int, purpose: str, step: int, layer: int) -> None:
        self.key = key
        self.num_bytes = num_bytes
        self.purpose = purpose
        self.priority = PREFETCH if purpose == "prefetch" else DEMAND
        self.step = step
        self.layer = layer
        self.seq = 0
        self.state = "new"  # new -> queued -> running -> done | cancelled
        self.start_s = 0.0
        self.ready_s = 0.0  # the copy may not start before this time (the policy's decision)
        self.waiter: simpy.Event | None = None  # made only when the engine waits on it
        self.used = False  # prefetches: accessed before leaving the cache
        self.row = -1  # event-log row once logged
        self.moved = 0  # bytes moved by finished chunks (chunked links only)
        self.bytes_per_s = 0.0  # > 0: a slower source than the link (NVMe, see sim.host)


class Link:
    """Serial host-to-device link with priorities, cancellation and optional chunking."""

    record_chunks = False  # tests: keep (start, end, key, bytes) of every chunk in ``chunks``

    def __init__(self, env: simpy.Environment, bytes_per_s: float, latency_s: float,
                 num_experts: int, log: EventLog, on_done: Callable[[Copy], None],
                 chunk_bytes: int = 0) -> None:
        self.env = env
        self.bytes_per_s = bytes_per_s
        self.latency_s = latency_s
        self.num_experts = num_experts
        self.log = log
        self.on_done = on_done
        self._heap: list[tuple[int, int, Copy]] = []
        self._seq = 0
        self._wake: simpy.Event | None = None
        self.running: Copy | None = None
        self.busy_until = 0.0  # when the running copy (chunk) ends (meaningful while running)
        self.chunk_bytes = int(chunk_bytes)
        if self.chunk_bytes < 0:
            raise ValueError(f"chunk_bytes must be >= 0, got {chunk_bytes!r}")
        self.chunks: list[tuple[float, float, int, int]] = []
        self.process = env.process(self._serve_chunked() if self.chunk_bytes else self._serve())

    def copy_s(self, num_bytes: int) -> float:
        """Seconds one copy of ``num_bytes`` occupies the link."""
        return self.latency_s + num_bytes / self.bytes_per_s

    def submit(self, copy: Copy) -> None:
        """Queue ``copy``."""
        self._seq += 1
        copy.seq = self._seq
        copy.state = "queued"
        heapq.heappush(self._heap, (copy.priority, copy.seq, copy))
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def promote(self, copy: Copy) -> None:
        """Raise a queued copy to demand priority (its old heap entry goes stale)."""
        if copy.state == "queued" and copy.priority != DEMAND:
            copy.priority = DEMAND
            heapq.heappush(self._heap, (DEMAND, copy.seq, copy))
        elif copy.state == "running":  # a chunked link must not suspend it for a demand now
            copy.priority = DEMAND

    def cancel(self, copy: Copy) -> None:
        """Abandon a queued or running copy."""
        if copy.state == "queued":
            copy.state = "cancelled"
            now = self.env.now
            start = copy.start_s if copy.moved else now  # suspended: it ran from start_s
            copy.row = self.log.add_codes(_K_COPY, start, now, copy.step, copy.layer,
                                          copy.key % self.num_experts, copy.moved, _R_LINK,
                                          _D_CANCELLED, 0)
        elif copy.state == "running":
            self.process.interrupt(copy)

    def _pop(self) -> Copy | None:
        heap = self._heap
        while heap:
            priority, _, copy = heapq.heappop(heap)
            if copy.state == "queued" and copy.priority == priority:
                return copy
        return None

    def _peek(self) -> Copy | None:
        heap = self._heap
        while heap:
            priority, _, copy = heap[0]
            if copy.state == "queued" and copy.priority == priority:
                return copy
            heapq.heappop(heap)
        return None

    def _next_copy(self):  # noqa: ANN202 - SimPy generator
        """Wait until a copy is queued and return it (``copy = yield from self._next_copy()``)."""
        while True:
            copy = self._pop()
            if copy is not None:
                return copy
            self._wake = self.env.event()
            yield self._wake
            self._wake = None

    def _complete(self, copy: Copy) -> None:
        """Log a finished copy (from its first start to now) and wake whoever waits for it."""
        copy.state = "done"
        detail = copy.purpose
        if detail == "prefetch" and copy.used:
            detail = "prefetch_used"
        copy.row = self.log.add_codes(_K_COPY, copy.start_s, self.env.now, copy.step, copy.layer,
                                      copy.key % self.num_experts, copy.num_bytes, _R_LINK,
                                      _DETAIL[detail], 0)
        self.on_done(copy)
        if copy.waiter is not None:
            copy.waiter.succeed()

    def _serve(self):  # noqa: ANN202 - SimPy generator
        env, log, n_experts = self.env, self.log, self.num_experts
        while True:
            copy = yield from self._next_copy()
            copy.state = "running"
            copy.start_s = start = max(env.now, copy.ready_s)
            self.running = copy
            bw = copy.bytes_per_s or self.bytes_per_s
            try:  # one timeout: the wait for the decision, then the copy
                delay = start - env.now + self.latency_s + copy.num_bytes / bw
                self.busy_until = env.now + delay  # nothing happens on the link before then
                yield env.timeout(delay)
            except simpy.Interrupt:
                copy.state = "cancelled"
                start = min(start, env.now)
                moved = max(0.0, (env.now - start - self.latency_s) * bw)
                copy.row = log.add_codes(_K_COPY, start, env.now, copy.step, copy.layer,
                                         copy.key % n_experts, int(min(moved, copy.num_bytes)),
                                         _R_LINK, _D_CANCELLED, 0)
                self.running = None
                continue
            self.running = None
            self._complete(copy)

    def _serve_chunked(self):  # noqa: ANN202 - SimPy generator
        env, log, n_experts = self.env, self.log, self.num_experts
        chunk, latency = self.chunk_bytes, self.latency_s
        record = self.chunks if self.record_chunks else None
        while True:
            copy = yield from self._next_copy()
            start = max(env.now, copy.ready_s)
            if not copy.moved:  # first start (a resumed copy keeps its own)
                copy.start_s = start
            copy.state = "running"
            self.running = copy
            bw = copy.bytes_per_s or self.bytes_per_s
            suspended = False
            try:
                while True:  # one timeout per chunk (the first also waits for the decision)
                    size = min(chunk, copy.num_bytes - copy.moved)
                    delay = start - env.now + latency + size / bw
                    self.busy_until = env.now + delay
                    yield env.timeout(delay)
                    if record is not None:
                        record.append((start, env.now, copy.key, size))
                    copy.moved += size
                    if copy.moved >= copy.num_bytes:
                        break
                    top = self._peek()
                    if top is not None and top.priority < copy.priority:
                        suspended = True
                        break
                    start = env.now
            except simpy.Interrupt:
                copy.state = "cancelled"
                start = min(start, env.now)
                part = max(0.0, (env.now - start - latency) * bw)
                moved = copy.moved + int(min(part, size))
                if record is not None and env.now > start:
                    record.append((start, env.now, copy.key, moved - copy.moved))
                copy.moved = moved
                copy.row = log.add_codes(_K_COPY, min(copy.start_s, env.now), env.now, copy.step,
                                         copy.layer, copy.key % n_experts, moved, _R_LINK,
                                         _D_CANCELLED, 0)
                self.running = None
                continue
            self.running = None
            if suspended:  # back into the queue with its sequence number; the demand goes first
                copy.state = "queued"
                heapq.heappush(self._heap, (copy.priority, copy.seq, copy))
                continue
            self._complete(copy)
