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

:class:`DirectLink` is the same link without SimPy (the engine's default): a link has at most
one live event at a time, so it keeps that event's time and callback in two attributes and the
engine runs it with :meth:`Link.advance`, :meth:`Link.sync`, :meth:`Link.wait` and
:meth:`Link.drain` (which :class:`Link` implements on its SimPy environment). Times are the same
sums, so both give equal event logs (``tests/sim/test_fast_paths.py``).

Copy engines (``engines``, the hardware's ``copy_engines``): with two or more, the per-copy
latency of a copy that starts the moment the previous one ends is hidden (its setup ran on
another engine while the previous one moved data); the bytes still share the link's bandwidth,
so copies never overlap on the wire. With one engine every copy pays its latency.

A copy's ``extra_s`` keeps the link busy beyond its own bytes: the runtime's writeback of the
expert it evicted, on the same stream (:class:`~sim.system.SystemProfile`'s
``writeback_evicted``); its log row spans both and counts its own bytes.

Batches (:meth:`Link.batch`): several experts moved as one transfer (one latency, the sum of
their bytes); all land together at its end, each logged as its own row, back to back within
the transfer's span. Batches carry demand copies only and are never cancelled.

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
                 "start_s", "ready_s", "waiter", "used", "row", "moved", "bytes_per_s", "end_s",
                 "members", "extra_s")

    def __init__(self, key: int, num_bytes: int, purpose: str, step: int, layer: int,
                 ready_s: float = 0.0) -> None:
        self.key = key
        self.num_bytes = num_bytes
        self.purpose = purpose
        self.priority = PREFETCH if purpose == "prefetch" else DEMAND
        self.step = step
        self.layer = layer
        self.state = "new"  # new -> queued -> running -> done | cancelled
        # ``seq`` (queue order) is set when queued, ``start_s`` when it first starts, ``end_s``
        # when it lands
        self.ready_s = ready_s  # the copy may not start before this time (the policy's decision)
        self.waiter: simpy.Event | None = None  # made only when the engine waits on it
        self.used = False  # prefetches: accessed before leaving the cache
        self.row = -1  # event-log row once logged
        self.moved = 0  # bytes moved by finished chunks (chunked links only)
        self.bytes_per_s = 0.0  # > 0: a slower source than the link (NVMe, see sim.host)
        self.members: list[Copy] | None = None  # a batch: the copies it moves
        self.extra_s = 0.0  # link time beyond its own bytes (a writeback on the same stream)


class Link:
    """Serial host-to-device link with priorities, cancellation and optional chunking."""

    record_chunks = False  # tests: keep (start, end, key, bytes) of every chunk in ``chunks``

    def __init__(self, env: simpy.Environment, bytes_per_s: float, latency_s: float,
                 num_experts: int, log: EventLog, on_done: Callable[[Copy], None] | None,
                 chunk_bytes: int = 0, engines: int = 1,
                 slot_done: Callable[[int], None] | None = None) -> None:
        self.env = env
        self.bytes_per_s = bytes_per_s
        self.latency_s = latency_s
        self.num_experts = num_experts
        self.log = log
        self._buf = log.buf
        self.on_done = on_done  # called with every finished copy
        self.slot_done = slot_done  # called with the key of every finished non-stream copy
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
        self.engines = int(engines)
        self._pipelined = self.engines > 1  # a second engine hides back-to-back latencies
        self._last_end = -1.0  # when the last copy (chunk) finished moving (-1: after a cancel)
        self._cur_latency = latency_s  # the running copy's (chunk's) latency

    def copy_s(self, num_bytes: int) -> float:
        """Seconds one copy of ``num_bytes`` occupies the link."""
        return self.latency_s + num_bytes / self.bytes_per_s

    def _latency(self, start: float) -> float:
        """The per-copy latency of a copy (chunk) starting at ``start``: hidden behind the
        previous one when another copy engine prepared it meanwhile."""
        if self._pipelined and start == self._last_end:
            return 0.0
        return self.latency_s

    def batch(self, copies: list[Copy]) -> Copy:
        """One transfer moving ``copies`` (demand or stream copies of one layer, not yet
        submitted): submit it instead of them; they land together when it ends."""
        first = copies[0]
        total = sum(c.num_bytes for c in copies)
        seconds = sum(c.num_bytes / (c.bytes_per_s or self.bytes_per_s) for c in copies)
        batch = Copy(first.key, total, "demand", first.step, first.layer, first.ready_s)
        batch.bytes_per_s = total / seconds if seconds > 0 else 0.0
        batch.extra_s = sum(c.extra_s for c in copies)
        batch.members = list(copies)
        return batch

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
        """Abandon a queued or running copy (a running one stops now; its partial bytes count).
        A copy never submitted (held by the engine for a staging buffer) is logged the same as
        a queued one."""
        if copy.state == "queued" or copy.state == "new":
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
        # the per-copy latency, hidden behind the previous copy by a second engine (_latency)
        latency = 0.0 if self._pipelined and start == self._last_end else self.latency_s
        self._cur_latency = latency
        self._arm(start - now + latency + copy.num_bytes / bw + copy.extra_s, self._on_copy_end)

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
        self._last_end = now = self.env.now
        self._complete(copy, now)
        self._start_next()

    def _stop_running(self, copy: Copy) -> None:
        """Cancel the running copy now, logging the bytes that crossed."""
        now = self.env.now
        bw = copy.bytes_per_s or self.bytes_per_s
        first = min(copy.start_s, now)  # the row spans the copy's first start to now
        if self.chunk_bytes:
            start = min(self._chunk_start, now)
            part = max(0.0, (now - start - self._cur_latency) * bw)
            moved = copy.moved + int(min(part, self._chunk_size))
            if self.record_chunks and now > start:
                self.chunks.append((start, now, copy.key, moved - copy.moved))
            copy.moved = moved
        else:
            moved = int(min(max(0.0, (now - first - self._cur_latency) * bw), copy.num_bytes))
        copy.state = "cancelled"
        layer, expert = divmod(copy.key, self.num_experts)  # the copied key's
        copy.row = self.log.add_codes(_K_COPY, first, now, copy.step, layer, expert, moved,
                                      _R_LINK, _D_CANCELLED, 0)
        self._timer = None
        self.running = None
        self._last_end = -1.0

    def _complete(self, copy: Copy, now: float) -> None:
        """Log a finished copy (from its first start to ``now``) and wake whoever waits for it."""
        if copy.members is not None:
            self._complete_batch(copy)
            return
        copy.state = "done"
        copy.end_s = now
        detail = copy.purpose
        if detail == "prefetch" and copy.used:
            detail = "prefetch_used"
        buf = self._buf  # EventLog.add_codes, inlined (hot)
        layer, expert = divmod(copy.key, self.num_experts)  # the copied key's
        buf += _pack(_K_COPY, copy.start_s, now, copy.step, layer, expert,
                     copy.num_bytes, _R_LINK, _DETAIL[detail], 0)
        copy.row = self.log.base + len(buf) // _ROW_SIZE - 1
        slot_done, on_done = self.slot_done, self.on_done  # _done, inlined (hot)
        if slot_done is not None and detail != "stream":
            slot_done(copy.key)
        if on_done is not None:
            on_done(copy)
        if copy.waiter is not None:
            copy.waiter.succeed()

    def _done(self, copy: Copy) -> None:
        """Tell the owner a copy finished (``slot_done`` with its key unless it was streamed,
        ``on_done`` with the copy)."""
        if self.slot_done is not None and copy.purpose != "stream":
            self.slot_done(copy.key)
        if self.on_done is not None:
            self.on_done(copy)

    def _complete_batch(self, batch: Copy) -> None:
        """A batch landed: its copies are done, logged back to back within its span."""
        now, bw = self.env.now, batch.bytes_per_s or self.bytes_per_s
        t = now - batch.num_bytes / bw - batch.extra_s  # data from t, the latency before it
        buf = self._buf
        for i, copy in enumerate(batch.members):
            start = batch.start_s if i == 0 else t
            t += copy.num_bytes / bw + copy.extra_s
            copy.state, copy.start_s, copy.end_s = "done", start, now
            layer, expert = divmod(copy.key, self.num_experts)  # the copied key's
            buf += _pack(_K_COPY, start, min(t, now), copy.step, layer, expert,
                         copy.num_bytes, _R_LINK, _DETAIL[copy.purpose], 0)
            copy.row = self.log.base + len(buf) // _ROW_SIZE - 1
        batch.state, batch.end_s = "done", now
        for copy in batch.members:
            self._done(copy)
            if copy.waiter is not None:
                copy.waiter.succeed()

    # ---- chunked links ---------------------------------------------------------------------------
    def _start_chunk(self, copy: Copy, start: float) -> None:
        """Run the running copy's next chunk from ``start`` (the first one may wait for the
        decision)."""
        size = min(self.chunk_bytes, copy.num_bytes - copy.moved)
        self._chunk_start, self._chunk_size = start, size
        bw = copy.bytes_per_s or self.bytes_per_s
        self._cur_latency = self._latency(start)
        extra = copy.extra_s if not copy.moved else 0.0  # a writeback rides on the first chunk
        self._arm(start - self.env.now + self._cur_latency + size / bw + extra,
                  self._on_chunk_end)

    def _on_chunk_end(self, timer: simpy.Event) -> None:
        if timer is not self._timer:  # the copy was cancelled meanwhile
            return
        self._timer = None
        copy, now = self.running, self.env.now
        self._last_end = now
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
            self._complete(copy, now)
        self._start_next()

    # ---- driving the link from an engine (the simulator's loop) --------------------------------
    @property
    def next_s(self) -> float:
        """When the link's next event is due (``inf``: none)."""
        return self.env.peek()

    def advance(self, t: float) -> None:
        """Process every event due by ``t``. Between events the link's clock may lag behind:
        nothing happens on it until its next event."""
        env = self.env
        while env.peek() <= t:
            env.step()

    def sync(self, t: float) -> None:
        """Process the events due by ``t`` and set the link's clock to ``t`` exactly (when it is
        behind)."""
        self.advance(t)
        if self.env.now < t:
            self.env.run(until=t)

    def wait(self, copy: Copy) -> None:
        """Run the link until ``copy`` lands (its clock is then the completion time)."""
        step = self.env.step
        while copy.state != "done":
            step()

    def drain(self) -> None:
        """Run every pending event (the end of a run)."""
        self.env.run()


class _Clock:
    """A :class:`DirectLink`'s clock: the one attribute of a SimPy environment a link reads."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0


class DirectLink(Link):
    """:class:`Link` without SimPy: the same serving rules and the same times, to the bit.

    A link has at most one live event at a time (its running copy's or chunk's end, or a kick
    when idle; a cancelled copy's end is dropped, not left stale), so it keeps that event in two
    attributes instead of a heap: ``next_s`` (its time, ``inf`` when none) and the callback to
    run then. An engine drives it with :meth:`advance`, :meth:`sync`, :meth:`wait` and
    :meth:`drain`; the end times are the same sums (``now + delay``) SimPy would schedule, so a
    run on a ``DirectLink`` and one on a :class:`Link` give equal event logs. ``events`` counts
    the events processed. :meth:`completion` (SimPy waiter events) is not available.
    """

    def __init__(self, bytes_per_s: float, latency_s: float, num_experts: int, log: EventLog,
                 on_done: Callable[[Copy], None] | None, chunk_bytes: int = 0, engines: int = 1,
                 slot_done: Callable[[int], None] | None = None) -> None:
        super().__init__(_Clock(), bytes_per_s, latency_s, num_experts, log,  # type: ignore[arg-type]
                         on_done, chunk_bytes, engines, slot_done)
        self.next_s = float("inf")
        self._due: Callable[[object], None] | None = None
        self.events = 0

    # a plain attribute here (it shadows Link's property): the engine reads it at every layer
    next_s: float = float("inf")

    def completion(self, copy: Copy) -> simpy.Event:
        """Not available without SimPy: engines call :meth:`wait`."""
        raise NotImplementedError("DirectLink has no SimPy events; call wait(copy)")

    def _arm(self, delay: float, callback: Callable[[simpy.Event], None]) -> None:
        end = self.env.now + delay
        self.busy_until = end
        self.next_s, self._due, self._timer = end, callback, callback  # type: ignore[assignment]

    def _kick(self) -> None:
        self._kicked = True
        self.next_s, self._due = self.env.now, self._on_kick

    def _stop_running(self, copy: Copy) -> None:
        super()._stop_running(copy)
        self.next_s, self._due = float("inf"), None  # its end never comes

    def _fire(self) -> None:
        """Process the pending event: the clock jumps to its time."""
        callback = self._due
        self.env.now = self.next_s
        self.next_s, self._due = float("inf"), None
        self.events += 1
        callback(self._timer)  # type: ignore[misc]

    def advance(self, t: float) -> None:
        """See :meth:`Link.advance`."""
        while self.next_s <= t:
            self._fire()

    def sync(self, t: float) -> None:
        """See :meth:`Link.sync`."""
        while self.next_s <= t:
            self._fire()
        if self.env.now < t:
            self.env.now = t

    def wait(self, copy: Copy) -> None:
        """See :meth:`Link.wait`."""
        fire = self._fire
        while copy.state != "done":
            fire()

    def drain(self) -> None:
        """See :meth:`Link.drain`."""
        while self.next_s != float("inf"):
            self._fire()
