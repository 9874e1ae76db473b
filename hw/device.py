"""The device abstraction: CUDA streams and events, or their CPU twin behind the same interface.

The executor talks to a :class:`Device` only through three streams and their events:

- ``compute``: where the model runs (on CUDA the current stream);
- ``demand``: copies a layer is waiting for (on CUDA a higher-priority stream);
- ``prefetch``: speculative copies (on CUDA a normal-priority stream).

``stream.copy(dst, src)`` enqueues one host-to-device copy and returns a :class:`CopyHandle`
(events around the copy); ``stream.record()`` returns an event; ``stream.wait(event)`` orders the
stream after an event; ``event.query()`` / ``event.synchronize()`` are the only host-side waits.
No device-wide synchronize happens until :meth:`Device.finish`.

``device="cpu"`` is the *CPU twin*: device memory is host memory, copies are plain ``copy_``, and
the streams are stand-ins. Compute is synchronous; the two copy streams share one serial copy
engine (:class:`TwinEngine`) whose queued work runs lazily: when someone waits for one of its events
(highest priority stream first, FIFO within a stream, so a demand copy issued after a queued
prefetch completes first) and at :meth:`Device.progress`, which the executor calls after each
layer's compute (the link works while the device computes; ``twin_copies_per_layer`` limits how
many copies finish then, so in-flight copies and cancellation can be exercised). A queued copy can
be cancelled before it ran; on CUDA an enqueued copy cannot be revoked, so cancelling only stops
waiting for it (its bytes crossed the link; the slot's next writer waits for it). Twin events carry
``time.perf_counter`` stamps taken when they complete.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import nullcontext
from typing import Any

import torch


class TwinEvent:
    """A stand-in for ``torch.cuda.Event``: done once reached, with a perf_counter stamp."""

    __slots__ = ("t", "done", "_engine")

    def __init__(self, engine: TwinEngine | None, done: bool = False) -> None:
        self._engine = engine
        self.done = done
        self.t = time.perf_counter() if done else 0.0

    def query(self) -> bool:
        """Whether the event has been reached (never blocks)."""
        return self.done

    def synchronize(self) -> None:
        """Run the twin's queued copies until this event is reached."""
        if not self.done:
            self._engine.run_until(self)

    def _reach(self) -> None:
        self.done = True
        self.t = time.perf_counter()


class TwinStream:
    """A stand-in stream. ``lazy`` streams (copy streams) queue work on the :class:`TwinEngine`;
    the compute stream runs everything at once."""

    def __init__(self, engine: TwinEngine, priority: int, lazy: bool) -> None:
        self.engine = engine
        self.priority = priority
        self.lazy = lazy
        self.queue: deque[list[Any]] = deque()  # ops: [kind, dst, src, event]
        engine.streams.append(self)
        engine.streams.sort(key=lambda s: s.priority)  # lower number = higher priority (as CUDA)

    def record(self) -> TwinEvent:
        """An event reached when all work queued so far on this stream is done."""
        if self.lazy and self.queue:
            event = TwinEvent(self.engine)
            self.queue.append(["mark", None, None, event])
            return event
        return TwinEvent(self.engine, done=True)

    def wait(self, event: TwinEvent) -> None:
        """Order this stream after ``event`` (the twin runs the copy engine until it is reached)."""
        event.synchronize()

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> CopyHandle:
        """Copy ``src`` into ``dst`` (queued on lazy streams); returns its handle."""
        if not self.lazy:
            start = TwinEvent(self.engine, done=True)
            dst.copy_(src)
            return CopyHandle(start, TwinEvent(self.engine, done=True), None)
        start, end = TwinEvent(self.engine), TwinEvent(self.engine)
        op = ["copy", dst, src, (start, end)]
        self.queue.append(op)
        return CopyHandle(start, end, (self, op))

    def context(self) -> nullcontext:
        """Context making this stream current (nothing to do on the twin)."""
        return nullcontext()


class TwinEngine:
    """The twin's serial copy engine shared by its copy streams (see the module docstring)."""

    def __init__(self) -> None:
        self.streams: list[TwinStream] = []
        self.copies_run = 0  # copies executed so far (tests)
        self.order: list[int] = []  # id() of each destination tensor, in execution order (tests)

    def _step(self) -> bool:
        for stream in self.streams:
            if stream.queue:
                kind, dst, src, event = stream.queue.popleft()
                if kind == "mark":
                    event._reach()
                else:
                    start, end = event
                    start._reach()
                    dst.copy_(src)
                    end._reach()
                    self.copies_run += 1
                    self.order.append(id(dst))
                return True
        return False

    def run_until(self, event: TwinEvent) -> None:
        """Execute queued work, highest priority first, until ``event`` is reached."""
        while not event.done:
            if not self._step():
                raise RuntimeError("waiting for a twin event that no queued work will reach")

    def drain(self, max_copies: int | None = None) -> None:
        """Execute queued work (at most ``max_copies`` copies when given)."""
        limit = self.copies_run + max_copies if max_copies is not None else None
        while limit is None or self.copies_run < limit:
            if not self._step():
                return


class CudaEvent:
    """A timing ``torch.cuda.Event`` with the twin's interface."""

    __slots__ = ("raw",)

    def __init__(self) -> None:
        self.raw = torch.cuda.Event(enable_timing=True)

    def query(self) -> bool:
        """Whether the GPU has reached the event (never blocks)."""
        return self.raw.query()

    def synchronize(self) -> None:
        """Block the host until the GPU reaches the event (an event wait, not a device sync)."""
        self.raw.synchronize()


class CudaStream:
    """A ``torch.cuda.Stream`` with the twin's interface."""

    def __init__(self, raw: torch.cuda.Stream) -> None:
        self.raw = raw

    def record(self) -> CudaEvent:
        """Record and return an event at the current end of the stream."""
        event = CudaEvent()
        event.raw.record(self.raw)
        return event

    def wait(self, event: CudaEvent) -> None:
        """Make later work on this stream wait for ``event`` (no host block)."""
        self.raw.wait_event(event.raw)

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> CopyHandle:
        """Enqueue an asynchronous copy (pinned source) between two events."""
        start = self.record()
        with torch.cuda.stream(self.raw):
            dst.copy_(src, non_blocking=True)
        return CopyHandle(start, self.record(), None)

    def context(self) -> Any:
        """Context making this stream current."""
        return torch.cuda.stream(self.raw)


class CopyHandle:
    """One enqueued copy: ``start`` and ``end`` events; :meth:`cancel` abandons it."""

    __slots__ = ("start", "end", "_queued")

    def __init__(self, start: Any, end: Any, queued: tuple[TwinStream, list[Any]] | None) -> None:
        self.start = start
        self.end = end
        self._queued = queued

    def cancel(self) -> bool:
        """Abandon the copy; returns whether its bytes crossed (or will cross) the link.

        The twin drops a copy still queued (False); a copy that ran, and any CUDA copy (an
        enqueued ``cudaMemcpyAsync`` cannot be revoked), count as moved (True).
        """
        if self._queued is None:
            return True
        stream, op = self._queued
        queue = stream.queue
        position = next((i for i, o in enumerate(queue) if o is op), -1)
        if position >= 0:
            del queue[position]
            self.start._reach()
            self.end._reach()
            return False
        return True


class Device:
    """``kind`` ``"cuda"`` or ``"cuda:N"`` (real streams and events; ``N`` becomes the current
    CUDA device) or ``"cpu"`` (the twin); see module docstring.

    ``dtype`` defaults to bfloat16 on CUDA and float32 on the twin.
    """

    def __init__(self, kind: str = "cpu", dtype: torch.dtype | None = None,
                 twin_copies_per_layer: int | None = None) -> None:
        from moe_offload_lab.traces.errors import ConfigError

        index = None
        if isinstance(kind, str) and kind.startswith("cuda:") and kind[5:].isdigit():
            kind, index = "cuda", int(kind[5:])
        if kind not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {kind!r}")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device='cuda' but CUDA is not available (use device='cpu')")
        if index is not None:
            if index >= torch.cuda.device_count():
                raise ConfigError(f"device cuda:{index} does not exist (this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s))")
            torch.cuda.set_device(index)  # streams, events and "cuda" tensors go there
        self.kind = kind
        self.is_cuda = kind == "cuda"
        self.torch_device = torch.device("cuda" if self.is_cuda else "cpu")
        self.dtype = dtype or (torch.bfloat16 if self.is_cuda else torch.float32)
        self.twin_copies_per_layer = twin_copies_per_layer
        if self.is_cuda:
            self.engine = None
            self.compute = CudaStream(torch.cuda.current_stream())
            # lower number = higher priority; out-of-range values map to the highest available
            self.prefetch = CudaStream(torch.cuda.Stream(priority=0))
            self.demand = CudaStream(torch.cuda.Stream(priority=-100))
            self.name = torch.cuda.get_device_name()
        else:
            self.engine = TwinEngine()
            self.compute = TwinStream(self.engine, priority=0, lazy=False)
            self.demand = TwinStream(self.engine, priority=-1, lazy=True)
            self.prefetch = TwinStream(self.engine, priority=0, lazy=True)
            self.name = "cpu-twin"
        self._base_event: Any = None
        self._host_base = 0.0

    # ---- memory ---------------------------------------------------------------------------------
    def empty(self, *shape: int) -> torch.Tensor:
        """Uninitialised device memory of the run's dtype."""
        return torch.empty(*shape, dtype=self.dtype, device=self.torch_device)

    def pin(self, tensor: torch.Tensor) -> torch.Tensor:
        """Page-locked copy of a host tensor when CUDA is available; the tensor itself otherwise."""
        if torch.cuda.is_available():
            return tensor.pin_memory()
        return tensor

    def to_host(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Start copying ``x`` to host memory on the compute stream; returns (tensor, event):
        the host must ``event.synchronize()`` before reading the tensor."""
        if not self.is_cuda:
            return x, self.compute.record()
        out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        out.copy_(x, non_blocking=True)
        return out, self.compute.record()

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device (the same tensor on the twin)."""
        if not self.is_cuda:
            return x
        return x.to(self.torch_device, non_blocking=False)

    # ---- time -----------------------------------------------------------------------------------
    def start_clock(self) -> None:
        """Time zero of the run: a base event (reached) and the host clock read just after."""
        self._base_event = self.compute.record()
        self._base_event.synchronize()
        self._host_base = time.perf_counter()

    def host_time(self, stamp: float | None = None) -> float:
        """Host seconds since :meth:`start_clock` (of a ``perf_counter`` ``stamp``, or now)."""
        return (time.perf_counter() if stamp is None else stamp) - self._host_base

    def progress(self) -> None:
        """The device computed a layer: the twin lets its copy engine work; no-op on CUDA."""
        if self.engine is not None:
            self.engine.drain(self.twin_copies_per_layer)

    def finish(self) -> None:
        """End of the run: wait for all three streams (their last events), then times resolve."""
        for stream in (self.demand, self.prefetch, self.compute):
            stream.record().synchronize()

    def event_time(self, event: Any) -> float:
        """Seconds from :meth:`start_clock` to ``event`` (after :meth:`finish`); floats pass."""
        if isinstance(event, float):
            return event
        if isinstance(event, TwinEvent):
            return event.t - self._host_base
        return self._base_event.raw.elapsed_time(event.raw) / 1e3
