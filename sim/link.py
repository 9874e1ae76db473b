"""The host-to-device link: a SimPy resource serving copies one at a time, by priority.

Demand copies (priority 0) go before prefetches (priority 1); ties in submission order. A copy
takes ``latency + bytes / bandwidth`` (the copy's own, lower, bandwidth when its source is slower
than the link: an expert read from NVMe, see :mod:`sim.host`). A queued copy can be cancelled
(dropped lazily) or raised to demand priority; a running one can be cancelled (the link stops at
once and counts the bytes that crossed).

The link is driven by SimPy events with callbacks rather than by a process: a copy is one
:class:`simpy.Timeout` whose callback completes it and starts the next one, so a copy costs one
event and no generator switch. An idle link that receives a copy, or one whose running copy was
cancelled, picks its next copy in a zero-delay "kick" event, i.e. once the caller has queued
everything it submits at that instant (the best copy among them goes first). A cancelled copy's
timeout still fires; its callback sees it is stale and does nothing.

Optional chunking (``chunk_bytes > 0``): a copy crosses in chunks of at most ``chunk_bytes``, each
costing ``latency + chunk / bandwidth`` (every cudaMemcpyAsync pays the per-copy latency). After
each chunk the link looks at its queue; if a copy of strictly higher priority (a demand) waits,
the running one is suspended (it keeps its moved bytes and its sequence number) and goes back into
the queue. A copy's log row spans its first start to its end and records the bytes that moved.
One timeout per chunk.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import simpy
from moe_offload_lab.sim.eventlog import DETAIL as _DETAIL
from moe_offload_lab.sim.eventlog import KIND, RESOURCE, ROW, EventLog

_K_COPY, _R_LINK, _D_CANCELLED = KIND["copy"], RESOURCE["link"], _DETAIL["cancelled"]
_pack, _ROW_SIZE = ROW.pack, ROW.size

DEMAND = 0
PREFETCH = 1


class Copy:
    """One host-to-device copy of an expert (``purpose``: demand, stream or prefetch)."""

    __slots__ = ("key", "num_bytes", "priority", "purpose", "step", "layer", "seq", "state",
                 "start_s", "ready_s", "waiter", "used", "row", "moved", "bytes_per_s")

    def __init__(self, key: int, num_bytes: int, purpose: str, step: int, layer: int,
                 ready_s: float = 0.0) -> None:
        self.key = key
        self.num_bytes = num_bytes
        self.purpose = purpose
        self.priority = PREFETCH if purpose == "prefetch" else DEMAND
        self.step = step
        self.layer = layer
        self.seq = 0
        self.state = "new"  # new -> queued -> running -> done | cancelled
        self.start_s = 0.0
        self.ready_s = ready_s  # the copy may not start before this time (the policy's decision)
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
        self._buf = log.buf
        self.on_done = on_done
        self._heap: list[tuple[int, int, Copy]] = []
        self._seq = 0
        self.running: Copy | None = None
        self.busy_until = 0.0  # when the running copy (chunk) ends (meaningful while running)
        self.chunk_bytes = int(chunk_bytes)
        if self.chunk_bytes < 0:
            raise ValueError(f"chunk_bytes must be >= 0, got {chunk_bytes!r}")
        self.chunks: list[tuple[float, float, int, int]] = []
        self._timer: simpy.Timeout | None = None  # the running copy's (chunk's) timeout
        self._chunk_start = 0.0  # start of the running chunk (chunked links)
        self._chunk_size = 0  # its bytes
        self._kicked = False  # a kick event is pending: the next copy starts then

    def copy_s(self, num_bytes: int) -> float:
        """Seconds one copy of ``num_bytes`` occupies the link."""
        return self.latency_s + num_bytes / self.bytes_per_s

    def submit(self, copy: Copy) -> None:
        """Queue ``copy``; an idle link starts its best queued copy once this instant's
        submissions are in (a zero-delay kick event)."""
        self._seq += 1
        copy.seq = self._seq
        copy.state = "queued"
        heapq.heappush(self._heap, (copy.priority, copy.seq, copy))
        if self.running is None and not self._kicked:
            self._kick()

    def submit_all(self, copies: list[Copy]) -> None:
        """Queue ``copies``, everything the caller submits at this instant: an idle link starts
        the best of them at once (the kick event is not needed)."""
        heap, push, seq = self._heap, heapq.heappush, self._seq
        for copy in copies:
            seq += 1
            copy.seq = seq
            copy.state = "queued"
            push(heap, (copy.priority, seq, copy))
        self._seq = seq
        if self.running is None and not self._kicked:
            self._start_next()

    def promote(self, copy: Copy) -> None:
        """Raise a queued copy to demand priority (its old heap entry goes stale)."""
        if copy.state == "queued" and copy.priority != DEMAND:
            copy.priority = DEMAND
            heapq.heappush(self._heap, (DEMAND, copy.seq, copy))
        elif copy.state == "running":  # a chunked link must not suspend it for a demand now
            copy.priority = DEMAND

    def cancel(self, copy: Copy) -> None:
        """Abandon a queued or running copy (a running one stops now; its partial bytes count)."""
        if copy.state == "queued":
            copy.state = "cancelled"
            now = self.env.now
            start = copy.start_s if copy.moved else now  # suspended: it ran from start_s
            layer, expert = divmod(copy.key, self.num_experts)  # the copied key's
            copy.row = self.log.add_codes(_K_COPY, start, now, copy.step, layer, expert,
                                          copy.moved, _R_LINK, _D_CANCELLED, 0)
        elif copy.state == "running":
            self._stop_running(copy)
            if not self._kicked:
                self._kick()

    def completion(self, copy: Copy) -> simpy.Event:
        """An event that fires once ``copy`` is done: the running copy's own timeout (its
        completion callback runs first), or a waiter event the completion triggers. The
        caller must not cancel ``copy`` while it waits."""
        if copy is self.running and not self.chunk_bytes:
            return self._timer
        if copy.waiter is None:
            copy.waiter = self.env.event()
        return copy.waiter

    # ---- serving ---------------------------------------------------------------------------------
    def _kick(self) -> None:
        """Start the best queued copy in a zero-delay event (after the current instant's calls)."""
        self._kicked = True
        event = self.env.event()
        event.callbacks.append(self._on_kick)
        event.succeed()

    def _on_kick(self, _event: simpy.Event) -> None:
        self._kicked = False
        if self.running is None:
            self._start_next()

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

    def _start_next(self) -> None:
        """Start the best queued copy, if any (the link is idle)."""
        copy = self._pop()
        if copy is None:
            return
        now = self.env.now
        start = now if now > copy.ready_s else copy.ready_s  # it waits for the decision
        if not copy.moved:  # first start (a resumed chunked copy keeps its own)
            copy.start_s = start
        copy.state = "running"
        self.running = copy
        if self.chunk_bytes:
            self._start_chunk(copy, start)
            return
        bw = copy.bytes_per_s or self.bytes_per_s
        self._arm(start - now + self.latency_s + copy.num_bytes / bw, self._on_copy_end)

    def _arm(self, delay: float, callback: Callable[[simpy.Event], None]) -> None:
        """Schedule the running copy's (chunk's) end ``delay`` seconds from now."""
        env = self.env
        self.busy_until = env.now + delay  # nothing happens on the link before then
        timer = simpy.Timeout(env, delay)
        timer.callbacks.append(callback)
        self._timer = timer

    def _on_copy_end(self, timer: simpy.Event) -> None:
        if timer is not self._timer:  # the copy was cancelled meanwhile
            return
        self._timer = None
        copy = self.running
        self.running = None
        self._complete(copy)
        self._start_next()

    def _stop_running(self, copy: Copy) -> None:
        """Cancel the running copy now, logging the bytes that crossed."""
        now = self.env.now
        bw = copy.bytes_per_s or self.bytes_per_s
        first = min(copy.start_s, now)  # the row spans the copy's first start to now
        if self.chunk_bytes:
            start = min(self._chunk_start, now)
            part = max(0.0, (now - start - self.latency_s) * bw)
            moved = copy.moved + int(min(part, self._chunk_size))
            if self.record_chunks and now > start:
                self.chunks.append((start, now, copy.key, moved - copy.moved))
            copy.moved = moved
        else:
            moved = int(min(max(0.0, (now - first - self.latency_s) * bw), copy.num_bytes))
        copy.state = "cancelled"
        layer, expert = divmod(copy.key, self.num_experts)  # the copied key's
        copy.row = self.log.add_codes(_K_COPY, first, now, copy.step, layer, expert, moved,
                                      _R_LINK, _D_CANCELLED, 0)
        self._timer = None
        self.running = None

    def _complete(self, copy: Copy) -> None:
        """Log a finished copy (from its first start to now) and wake whoever waits for it."""
        copy.state = "done"
        detail = copy.purpose
        if detail == "prefetch" and copy.used:
            detail = "prefetch_used"
        buf = self._buf  # EventLog.add_codes, inlined (hot)
        layer, expert = divmod(copy.key, self.num_experts)  # the copied key's
        buf += _pack(_K_COPY, copy.start_s, self.env.now, copy.step, layer, expert,
                     copy.num_bytes, _R_LINK, _DETAIL[detail], 0)
        copy.row = len(buf) // _ROW_SIZE - 1
        self.on_done(copy)
        if copy.waiter is not None:
            copy.waiter.succeed()

    # ---- chunked links ---------------------------------------------------------------------------
    def _start_chunk(self, copy: Copy, start: float) -> None:
        """Run the running copy's next chunk from ``start`` (the first one may wait for the
        decision)."""
        size = min(self.chunk_bytes, copy.num_bytes - copy.moved)
        self._chunk_start, self._chunk_size = start, size
        bw = copy.bytes_per_s or self.bytes_per_s
        self._arm(start - self.env.now + self.latency_s + size / bw, self._on_chunk_end)

    def _on_chunk_end(self, timer: simpy.Event) -> None:
        if timer is not self._timer:  # the copy was cancelled meanwhile
            return
        self._timer = None
        copy, now = self.running, self.env.now
        if self.record_chunks:
            self.chunks.append((self._chunk_start, now, copy.key, self._chunk_size))
        copy.moved += self._chunk_size
        if copy.moved < copy.num_bytes:
            top = self._peek()
            if top is None or top.priority >= copy.priority:
                self._start_chunk(copy, now)
                return
            # suspended: back into the queue with its sequence number; the demand goes first
            copy.state = "queued"
            heapq.heappush(self._heap, (copy.priority, copy.seq, copy))
            self.running = None
        else:
            self.running = None
            self._complete(copy)
        self._start_next()
