"""OffloadExecutor: runs MoE layers with a policy, following the call order of :mod:`policies.base`.

Per step the model calls :meth:`OffloadExecutor.begin_step`, then for each MoE layer
:meth:`OffloadExecutor.moe_layer` with the layer's normalised hidden states and routing, then
:meth:`OffloadExecutor.end_step`. Inside :meth:`moe_layer`:

1. the host waits for the layer's routing (an event recorded on the compute stream: live routing
   would be read back here) and polls in-flight copies: each finished one becomes resident and
   ``policy.on_fetch_done`` is called (issue order);
2. the contract's calls, through the one protocol every engine drives
   (:class:`policies.protocol.LayerProtocol`): ``on_layer``, ``place``, ``admit``, ``evict`` (+
   ``on_evict``), ``prefetch`` and its cancellations; the executor supplies the copies
   (:class:`~policies.protocol.Transfers`): demand copies on the high-priority ``demand`` stream
   into slots, non-admitted ones into scratch buffers (*stream*), prefetch copies on the
   ``prefetch`` stream;
3. CPU-placed experts start on host threads (a small ThreadPoolExecutor) from the host weights;
4. the compute stream waits (``stream.wait``) for the copies the layer needs (a *stall*), runs
   the device experts in ascending expert order, gathers the CPU results, and combines all outputs
   with the gate weights in ascending expert order (so every placement gives the same sums).

Every copy, compute interval, stall, policy call and step becomes a row of the simulator's event
log (:mod:`sim.eventlog`) with times from device events (host perf_counter for policy calls and CPU
experts), resolved once at :meth:`finish`; :mod:`sim.metrics` works on it unchanged. With
``policy=None`` every expert is preloaded (all-resident reference).

Low-precision copies (HOBBIT's ``"gpu-lowbits"`` placement, :mod:`policies.base`): the executor
has no quantized expert store, so such a copy moves the full weights and the expert computes
with them (outputs stay equal to the all-resident model, and the copy's time and logged bytes are
a full expert's); the computations that would have used the low-precision copy are counted in
``stats["lowbit_expert_computes"]`` exactly as the simulator counts them.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from moe_offload_lab.hw.device import CopyHandle, Device
from moe_offload_lab.hw.slots import ScratchPool, SlotPool
from moe_offload_lab.hw.store import ExpertStore, expert_ffn
from moe_offload_lab.policies.base import Policy
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel
from moe_offload_lab.policies.protocol import STREAM, LayerProtocol, Transfers
from moe_offload_lab.sim.eventlog import DETAIL, KIND, RESOURCE, EventLog
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

_K_COPY, _K_COMPUTE, _K_STALL, _K_POLICY, _K_STEP = (KIND[n] for n in (
    "copy", "compute", "stall", "policy", "step"))
_R_NONE, _R_LINK, _R_GPU, _R_CPU = (RESOURCE[n] for n in ("none", "link", "gpu", "cpu"))


@dataclass
class _Copy:
    """One expert copy in the executor's books."""

    key: int
    purpose: str  # demand, stream or prefetch
    handle: CopyHandle
    row: list[Any]  # its event-log row (times resolved at finish)
    used: bool = False


class OffloadExecutor(Transfers):
    """Routed-expert execution with an offloading policy (see module docstring).

    ``capacity_slots`` slots on ``device``; ``policy`` None: every expert resident, no policy.
    ``trace`` and ``schedule`` go to ``policy.reset`` (oracle components need them).
    """

    def __init__(self, spec: ModelSpec, store: ExpertStore, device: Device, policy: Policy | None,
                 capacity_slots: int, cost_model: CostModel, trace: Trace | None = None,
                 schedule: list[np.ndarray] | None = None, cpu_threads: int = 2,
                 check: bool = False) -> None:
        self.spec, self.store, self.device, self.policy = spec, store, device, policy
        self.check = check  # assert the cache invariants at every layer (tests; blocks on CUDA)
        self.check_layers = 0  # layers checked so far
        self.n_layers, self.n_experts = spec.num_moe_layers, spec.num_experts
        self.bytes = store.bytes_per_expert
        self.rows: list[list[Any]] = []  # event rows; start/end may be events until finish()
        self.stats = {"fetches": 0, "streams": 0, "prefetches": 0, "cancelled": 0,
                      "evictions": 0, "cpu_experts": 0, "max_used_slots": 0,
                      "lowbit_expert_computes": 0}
        self.pool_threads = ThreadPoolExecutor(max_workers=max(1, cpu_threads),
                                               thread_name_prefix="hw-cpu-expert")
        partition = None
        if policy is not None:
            policy.reset(spec, capacity_slots, cost_model, trace=trace, schedule=schedule)
            partition = policy.partition_slots
        self.slots = SlotPool(spec, capacity_slots, store.numel, device, partition)
        self.scratch = ScratchPool(store.numel, device)
        self.ctx = LayerContext(spec, self.slots.cache)
        # the contract's call order (policies.protocol); this executor supplies the copies
        self.protocol = (LayerProtocol(policy, self.slots.cache, self, memory=self.slots)
                         if policy is not None else None)
        self._scratch_of: dict[int, torch.Tensor] = {}  # this layer's streamed keys -> buffer
        self._cancel_at = 0.0  # host time of the layer's cancellations
        if policy is None:  # all-resident reference: preload every expert, untimed
            for key in range(spec.num_expert_keys):
                slot = self.slots.start_fetch(key)
                self.slots.buffer[slot].copy_(store.buffer(key))
                self.slots.complete_fetch(key)
        device.start_clock()

    # ---- steps ----------------------------------------------------------------------------------
    def begin_step(self, step: int, request_ids: np.ndarray, phase: np.ndarray,
                   rows: np.ndarray | None) -> None:
        """A step (batch) starts: ``ctx.begin_step`` and ``policy.begin_step``."""
        self.step, self.n_tok = step, len(request_ids)
        self.step_start = self.device.compute.record()
        self.ctx.begin_step(step, request_ids, phase, rows)
        if self.protocol is not None:
            self.protocol.begin_step(self.ctx)

    def end_step(self) -> None:
        """The step's last layer ran: wait for it, poll copies, ``policy.end_step``."""
        end = self.device.compute.record()
        end.synchronize()  # a decode step ends with a host read (sampling) in real serving
        self._poll()
        if self.protocol is not None:
            self.protocol.end_step(self.ctx)
        self.rows.append([_K_STEP, self.step_start, end, self.step, -1, -1, 0, _R_NONE,
                          DETAIL["step"], self.n_tok])

    def log_other(self, layer: int, start: Any, end: Any) -> None:
        """A non-expert compute interval (attention, router, shared experts...) of ``layer``."""
        self.rows.append([_K_COMPUTE, start, end, self.step, layer, -1, 0, _R_GPU,
                          DETAIL["other"], self.n_tok])

    # ---- copies ---------------------------------------------------------------------------------
    def _poll(self) -> None:
        """Completed copies become resident (``on_fetch_done``), in issue order."""
        if self.protocol is None:
            return
        for key, copy in list(self.protocol.copies.items()):
            if copy.handle.end.query():
                self.protocol.copy_done(key)

    # ---- Transfers: the protocol's copy hooks ---------------------------------------------------
    def start_copy(self, key: int, purpose: str, layer: int) -> _Copy:
        """Issue the copy of ``key``: into its slot (booked by the protocol) or, streamed, into
        the layer's next scratch buffer."""
        if purpose == STREAM:
            index = len(self._scratch_of)
            copy = self._issue(key, purpose, layer, index)
            self._scratch_of[key] = self.scratch.get(index)
            return copy
        return self._issue(key, purpose, layer)

    def cancel_copy(self, handle: _Copy) -> None:
        """Abandon an in-flight prefetch (logged ``cancelled``)."""
        self._cancel(handle, self._cancel_at)

    def before_cancel(self) -> None:
        """Cancellations are logged at the host's time of the decision."""
        self._cancel_at = self.device.host_time()

    def prefetch_used(self, handle: _Copy) -> None:
        """The prefetch got its first access: its row says so."""
        handle.used = True
        handle.row[8] = DETAIL["prefetch_used"]

    def _issue(self, key: int, purpose: str, layer: int, scratch_index: int = -1) -> _Copy:
        dev = self.device
        stream = dev.prefetch if purpose == "prefetch" else dev.demand
        if scratch_index >= 0:
            dst = self.scratch.get(scratch_index)
            self.scratch.fences.wait_free(scratch_index, stream)
        else:
            slot = self.slots.slot_of[key]
            dst = self.slots.buffer[slot]
            self.slots.fences.wait_free(slot, stream)
        handle = stream.copy(dst, self.store.buffer(key))
        if scratch_index >= 0:
            self.scratch.fences.write[scratch_index] = handle.end
        else:
            self.slots.fences.write[slot] = handle.end
        row = [_K_COPY, handle.start, handle.end, self.step, key // self.n_experts,
               key % self.n_experts, self.bytes, _R_LINK, DETAIL[purpose], 0]  # the key copied
        self.rows.append(row)
        copy = _Copy(key, purpose, handle, row)
        stat = {"demand": "fetches", "stream": "streams", "prefetch": "prefetches"}[purpose]
        self.stats[stat] += 1
        if purpose != STREAM:
            self.stats["max_used_slots"] = max(self.stats["max_used_slots"], self.slots.used())
        return copy

    def _cancel(self, copy: _Copy, now: float) -> None:
        moved = copy.handle.cancel()
        copy.row[1:3] = [copy.handle.start if moved else now, copy.handle.end if moved else now]
        copy.row[6] = self.bytes if moved else 0
        copy.row[8] = DETAIL["cancelled"]
        self.stats["cancelled"] += 1

    # ---- one MoE layer --------------------------------------------------------------------------
    def moe_layer(self, layer: int, x: torch.Tensor, ids: np.ndarray, gates: np.ndarray,
                  lookahead: dict[int, np.ndarray] | None = None) -> torch.Tensor:
        """Routed experts of MoE layer ``layer``: ``x`` [T, H] (normed hidden states on the
        device), ``ids`` [T, k] int expert ids, ``gates`` [T, k] gate weights (host arrays: the
        routing the host knows); returns the gate-weighted sum [T, H]."""
        dev, slots = self.device, self.slots
        step, n_tok = self.step, len(ids)
        dev.compute.record().synchronize()  # the routing is known on the host (live: read back)
        self._poll()
        experts_np, tokens_np = np.unique(ids, return_counts=True)
        experts, tokens = experts_np.tolist(), tokens_np.tolist()
        base = layer * self.n_experts
        keys = [base + e for e in experts]
        wait: list[_Copy] = []
        where: dict[int, Any] = {}  # key -> device buffer, or "cpu"
        if self.protocol is not None:
            t0 = time.perf_counter()
            self.ctx.set_layer(layer, experts, tokens, keys, ids, gates,
                               lookahead if lookahead is not None else {})
            self._scratch_of.clear()
            outcome, wait, on_cpu = self.protocol.layer(self.ctx)
            self.stats["evictions"] = self.protocol.n_evicted
            self.stats["lowbit_expert_computes"] = self.protocol.n_lowbit
            for key in on_cpu:
                where[key] = "cpu"
            where.update(self._scratch_of)  # streamed keys: their scratch buffers
            t1 = time.perf_counter()
            self.rows.append([_K_POLICY, dev.host_time(t0), dev.host_time(t1), step, layer,
                              -1, 0, _R_CPU, DETAIL["decision"], n_tok])
        else:
            outcome = ["hit"] * len(keys)
        # CPU-placed experts start on host threads first, overlapping the device's work
        rows_of = {e: np.nonzero((ids == e).any(axis=1))[0] for e in experts}  # token indices
        cpu_jobs: dict[int, Future] = {}
        if any(v == "cpu" for v in where.values()):
            x_host, ready = dev.to_host(x)
            for e, key in zip(experts, keys, strict=True):
                if where.get(key) == "cpu":
                    idx = torch.from_numpy(rows_of[e])
                    cpu_jobs[e] = self.pool_threads.submit(self._cpu_expert, key, x_host, idx,
                                                           ready, step, layer, e)
                    self.stats["cpu_experts"] += 1
        # the compute stream waits for the copies this layer needs
        pending = [c for c in wait if not c.handle.end.query()]
        if pending:
            before = dev.compute.record()
            for copy in pending:
                dev.compute.wait(copy.handle.end)
            after = dev.compute.record()
            self.rows.append([_K_STALL, before, after, step, layer, -1, 0, _R_GPU,
                              DETAIL["wait"], 0])
        if self.check:
            self._check_layer(keys, where, wait)
        outputs: dict[int, torch.Tensor] = {}
        gpu_used: list[tuple[str, int]] = []
        store = self.store
        ffn = getattr(store, "ffn", None)  # [T, H], buffer -> [T, H]
        for e, key, t, how in zip(experts, keys, tokens, outcome, strict=True):
            if e in cpu_jobs:
                continue
            buf = where.get(key)
            if buf is None:
                buf = slots.weights(key)
                gpu_used.append(("slot", slots.slot_of[key]))
            else:
                gpu_used.append(("scratch", next(i for i, b in enumerate(self.scratch.buffers)
                                                 if b is buf)))
            idx = torch.from_numpy(rows_of[e]).to(dev.torch_device)
            start = dev.compute.record()
            if ffn is not None:  # a store with its own expert function (live mode)
                outputs[e] = ffn(x[idx], buf)
            else:
                outputs[e] = expert_ffn(x[idx], buf, store.hidden, store.inter,
                                        store.matrices)
            end = dev.compute.record()
            self.rows.append([_K_COMPUTE, start, end, step, layer, e, 0, _R_GPU, DETAIL[how], t])
        for e, job in cpu_jobs.items():
            y, t0, t1 = job.result()
            outputs[e] = dev.to_device(y)
            self.rows.append([_K_COMPUTE, t0, t1, step, layer, e, 0, _R_CPU, DETAIL["cpu"],
                              len(rows_of[e])])
        # combine with the gate weights, in ascending expert order whatever ran where
        out = torch.zeros_like(x)  # [T, H]
        ids_t = torch.from_numpy(ids.astype(np.int64)).to(dev.torch_device)  # [T, k]
        gates_t = torch.from_numpy(np.ascontiguousarray(gates, dtype=np.float32)).to(
            device=dev.torch_device, dtype=x.dtype)  # [T, k]
        for e in experts:
            idx = torch.from_numpy(rows_of[e]).to(dev.torch_device)
            weight = (gates_t[idx] * (ids_t[idx] == e)).sum(dim=1, keepdim=True)  # [t, 1]
            out.index_add_(0, idx, outputs[e] * weight)
        done = dev.compute.record()
        for kind, index in gpu_used:
            fences = slots.fences if kind == "slot" else self.scratch.fences
            fences.read[index] = done
        dev.progress()
        return out

    def _check_layer(self, keys: list[int], where: dict[int, Any], wait: list[_Copy]) -> None:
        """Every key of the layer is resident, streamed or on the CPU once its copies landed;
        the slots never exceed the capacity."""
        cache = self.slots.cache
        assert cache.used_slots() <= cache.capacity_slots, "cache over capacity"
        assert self.slots.used() == cache.used_slots(), "slot map out of step with the cache"
        for copy in wait:
            copy.handle.end.synchronize()
        landed = {c.key for c in wait}
        for key in keys:
            assert key in cache.resident or key in landed or where.get(key) == "cpu", \
                f"key {key} not ready when its layer computes"
        self.check_layers += 1

    def _cpu_expert(self, key: int, x_host: torch.Tensor, idx: torch.Tensor, ready: Any,
                    step: int, layer: int, expert: int) -> tuple[torch.Tensor, float, float]:
        """Host thread: expert ``key`` on its tokens from the host weights; (y, start, end)."""
        ready.synchronize()
        t0 = self.device.host_time()
        y = self.store.compute(key, x_host[idx])  # [t, H]
        return y, t0, self.device.host_time()

    # ---- end of run -----------------------------------------------------------------------------
    def finish(self) -> pd.DataFrame:
        """Wait for the streams, abandon leftover copies (logged ``cancelled``) and return the
        event log frame with resolved times."""
        now = self.device.host_time()
        copies = self.protocol.copies if self.protocol is not None else {}
        for copy in list(copies.values()):
            if not copy.handle.end.query():
                self._cancel(copy, now)
        self.device.finish()
        self.pool_threads.shutdown(wait=True)
        log = EventLog()
        resolve = self.device.event_time
        for row in self.rows:
            log.add_codes(row[0], resolve(row[1]), resolve(row[2]), *row[3:])
        return log.to_frame()
