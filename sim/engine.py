"""The SimPy engine: replays a trace through a policy on a hardware profile.

One main process runs the GPU stream step by step and layer by layer, following the call order of
:mod:`policies.base` exactly; a :class:`~sim.link.Link` serves the copies (one SimPy timeout per
copy, with callbacks). Per MoE layer: the non-expert work (attention...) runs, then the routing is
known and the policy is called (``on_layer``, ``place``, ``admit``, ``evict``, ``prefetch``), the
demand copies are queued before the prefetches, the layer waits (a *stall*) for every copy it
needs, then its experts run: GPU experts one after another on the GPU stream, CPU-placed ones on
the host CPU in parallel, and the layer ends when both are done.

Events: one per copy, plus one per wait for a copy that is still queued (a copy already running
is waited on through its own timeout), plus a layer's timeout only when a copy ends during that
layer (otherwise the main process runs ahead of the clock, see ``_main``). Event-log rows are
packed records (:mod:`sim.eventlog`). ``benchmarks/bench_sim.py`` times the issue's two cases.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import simpy
from moe_offload_lab.policies.base import Policy
from moe_offload_lab.policies.cache import SlotCache
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.evaluation import (
    choose_victims,
    place_and_admit,
    plan_with_room,
    validate_cancel,
)
from moe_offload_lab.policies.needs import step_experts
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.eventlog import DETAIL, KIND, RESOURCE, EventLog
from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.sim.host import HostTier
from moe_offload_lab.sim.link import Copy, Link
from moe_offload_lab.sim.workload import ContinuousBatcher, static_batches
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

_NO_KEYS: frozenset[int] = frozenset()
_K_COMPUTE, _R_GPU = KIND["compute"], RESOURCE["gpu"]
_R_CPU, _D_CPU = RESOURCE["cpu"], DETAIL["cpu"]


@dataclass
class EngineResult:
    """A finished run: the event log frame and the run's parameters."""

    events: pd.DataFrame
    makespan_s: float
    tokens: int
    steps: int
    capacity_slots: int
    expert_bytes: int


class Engine:
    """Simulate ``trace`` under ``policy`` with a ``capacity_slots`` GPU expert cache.

    ``batch`` requests run together (static batching, :func:`sim.workload.static_batches`) unless
    an explicit ``schedule`` (trace rows per step) is given, or a ``batcher``
    (:class:`sim.workload.ContinuousBatcher`) that picks each step's rows at its start (policies
    then get no schedule in ``reset``). ``preload`` fills the cache before the
    first step (layer-major order, free of charge). ``check`` asserts the engine's invariants at
    every layer (for tests). ``chunk_mb`` > 0 moves copies in chunks of at most that many MB
    (1e6 bytes) so a demand copy can overtake a running prefetch (:class:`~sim.link.Link`).
    ``host`` (:class:`sim.host.HostTier`) models host DRAM over NVMe when the experts do not all
    fit in DRAM: each copy then runs at its source's bandwidth.
    """

    defer_timeouts = True  # skip SimPy timeouts while the link is idle (see _main); tests toggle it

    def __init__(self, spec: ModelSpec, trace: Trace, policy: Policy, hardware: HardwareProfile,
                 capacity_slots: int, batch: int = 1, *,
                 schedule: Sequence[np.ndarray] | None = None,
                 batcher: ContinuousBatcher | None = None,
                 preload: bool = False, prefill: bool = True, check: bool = False,
                 chunk_mb: float = 0, host: HostTier | None = None) -> None:
        n_keys = spec.num_expert_keys
        if isinstance(capacity_slots, bool) or not isinstance(capacity_slots, (int, np.integer)):
            raise ConfigError(f"cache capacity must be an integer number of slots, "
                              f"got {capacity_slots!r}")
        if capacity_slots < spec.top_k:
            raise ConfigError(f"cache of {capacity_slots} slots is smaller than one layer's "
                              f"top-k ({spec.top_k})")
        if capacity_slots > n_keys:
            raise ConfigError(f"cache of {capacity_slots} slots exceeds the model's {n_keys} "
                              f"experts")
        if trace.spec.num_moe_layers != spec.num_moe_layers or \
                trace.spec.num_experts != spec.num_experts or trace.spec.top_k != spec.top_k:
            raise ConfigError(f"trace of {trace.spec.name!r} does not match model {spec.name!r}")
        self.spec = spec
        self.n_layers = spec.num_moe_layers  # a computed property on ModelSpec: read it once
        self.trace = trace
        self.policy = policy
        self.hardware = hardware
        self.capacity_slots = int(capacity_slots)
        self.batcher = batcher
        if batcher is not None:  # continuous batching: the schedule grows as the run goes
            self.schedule: list[np.ndarray] = []
        else:
            self.schedule = (list(schedule) if schedule is not None
                             else static_batches(trace, batch, prefill=prefill))
        self.preload = preload
        self.check = check
        if isinstance(chunk_mb, bool) or not isinstance(chunk_mb, (int, float, np.integer,
                                                                   np.floating)) or \
                not 0 <= chunk_mb < float("inf"):
            raise ConfigError(f"link.chunk_mb must be a finite number >= 0, got {chunk_mb!r}")
        self.chunk_bytes = int(chunk_mb * 1e6)  # 0: whole copies (no chunking)
        if chunk_mb > 0 and self.chunk_bytes < 1:
            raise ConfigError(f"link.chunk_mb of {chunk_mb!r} is under one byte")
        self.compute = ComputeModel(spec, hardware)
        self.host = host
        self.log = EventLog()

    # ---- run ------------------------------------------------------------------------------------
    def run(self) -> EngineResult:
        """Run the whole schedule; returns the event log."""
        spec, policy = self.spec, self.policy
        n_layers, n_experts = spec.num_moe_layers, spec.num_experts
        policy.reset(spec, self.capacity_slots, self.compute.cost_model(), trace=self.trace,
                     schedule=None if self.batcher is not None else self.schedule)
        self.cache = SlotCache(self.capacity_slots, n_experts, n_layers, policy.partition_slots)
        self.copies: dict[int, Copy] = {}  # key -> in-flight copy holding a slot
        self.unused_prefetch: dict[int, Copy] = {}  # prefetched keys not accessed yet
        self.env = simpy.Environment()
        self.link = Link(self.env, self.compute.link_bytes_per_s, self.compute.link_latency_s,
                         n_experts, self.log, self._copy_done, self.chunk_bytes)
        if self.preload:
            for key in range(n_layers * n_experts):
                if self.cache.free_slots() <= 0:
                    break
                if self.cache.free_slots(key // n_experts) > 0:
                    self.cache.insert(key)
                    policy.on_fetch_done(key)
        self.env.process(self._main())
        gc_enabled = gc.isenabled()
        gc.disable()  # millions of short-lived objects: collection passes cost ~5% for nothing
        try:
            self.env.run()  # the main process cancels leftover copies, so the link drains too
        finally:
            if gc_enabled:
                gc.enable()
        tokens = int(sum(len(rows) for rows in self.schedule))
        return EngineResult(self.log.to_frame(), self.end_s, tokens, len(self.schedule),
                            self.capacity_slots, spec.expert_bytes)

    def _copy_done(self, copy: Copy) -> None:
        if copy.purpose == "stream":
            return
        del self.copies[copy.key]
        self.cache.complete_fetch(copy.key)
        self.policy.on_fetch_done(copy.key)

    def _evict(self, need: int, layer: int, protected: list[int]) -> None:
        """Free the slots of the policy's checked victims (:func:`choose_victims`)."""
        policy, cache, unused = self.policy, self.cache, self.unused_prefetch
        for key in choose_victims(policy, cache, need, layer, protected, self.spec.num_experts):
            cache.remove(key)
            unused.pop(key, None)
            policy.on_evict(key)

    def _main(self):  # noqa: ANN202, C901 - SimPy generator; the contract's sequence in one place
        env, log, cache, policy, link = self.env, self.log, self.cache, self.policy, self.link
        spec, compute, trace = self.spec, self.compute, self.trace
        n_layers, n_experts, expert_bytes = spec.num_moe_layers, spec.num_experts, spec.expert_bytes
        ctx = LayerContext(spec, cache)
        copies, unused = self.copies, self.unused_prefetch
        decision = policy.decision_cost
        host = self.host
        ids_all, gates_all = trace.expert_ids, trace.gate_weights
        gpu_memo = self._gpu_memo = {}  # tokens -> seconds of one expert
        self._cpu_memo = {}
        step_memo: dict[int, tuple[float, float]] = {}  # batch size -> (other_s, decision_s)
        buf, pack = log.buf, log.pack  # buf += pack(row): see EventLog.add_codes for the columns
        k_compute, k_stall, k_policy, k_step = (KIND[n] for n in (
            "compute", "stall", "policy", "step"))
        r_gpu, r_none, r_decision = RESOURCE["gpu"], RESOURCE["none"], RESOURCE[decision.where]
        d_other, d_decision, d_step, d_wait = (DETAIL[n] for n in (
            "other", "decision", "step", "wait"))
        d_hit, d_prefetch_hit, d_inflight, d_miss = (DETAIL[n] for n in (
            "hit", "prefetch_hit", "inflight", "miss"))
        ahead: dict[int, np.ndarray] = {}
        ctx.lookahead = ahead  # filled in place at every layer
        reads = policy.lookahead_distances  # None: every distance the trace carries
        lookahead = [(d, cols) for d, cols in sorted(trace.lookahead.items())
                     if reads is None or d in reads]
        # static schedules: every step's rows gathered once; a step then slices them (views)
        static = self.batcher is None and bool(self.schedule)
        if static:
            bounds = np.cumsum([0] + [len(r) for r in self.schedule]).tolist()  # [S + 1]
            rows_all = np.concatenate(self.schedule)  # [R]
            ids_rows, gates_rows = ids_all[rows_all], gates_all[rows_all]  # [R, L, k]
            request_rows, phase_rows = trace.request_id[rows_all], trace.phase[rows_all]  # [R]
            lookahead_rows = [(d, cols[rows_all]) for d, cols in lookahead]  # [R, L, k] each
        # batch-1 schedules: every step's sorted expert lists and keys in one numpy call
        single = static and all(len(r) == 1 for r in self.schedule)
        if single:
            sorted_ids = np.sort(ids_rows, axis=2)  # [S, L, k]
            sorted_all = sorted_ids.tolist()  # [S][L][k]
            offsets = (np.arange(n_layers, dtype=np.int64) * n_experts)[None, :, None]  # [1, L, 1]
            keys_all = (sorted_ids.astype(np.int64) + offsets).tolist()  # [S][L][k]
            ones = [[1] * spec.top_k] * n_layers
        resident = cache.resident  # a live set, never replaced
        # hot calls, bound once (policies bind their methods in reset, before the run)
        on_layer, prefetch, evict, check = policy.on_layer, policy.prefetch, self._evict, self.check
        start_fetch, promote, submit_all, completion = (cache.start_fetch, link.promote,
                                                        link.submit_all, link.completion)
        # ``clock`` is the GPU stream's time. While nothing can happen on the link before a
        # layer's end (no copy in flight, or the running one ends later), the main process skips
        # the layer's timeout and lets ``clock`` run ahead of ``env.now``; it syncs (one timeout)
        # otherwise, and before cancelling. Copies submitted while behind start at their
        # ``ready_s``, an absolute time, so timing is unchanged. (Not with a batcher: arrivals
        # are read against env.now.)
        defer = self.batcher is None and self.defer_timeouts
        clock = float(env.now)
        for step, rows in enumerate(self._steps()):
            if env.now < self._idle_until:  # continuous batching: wait for the next arrival
                yield env.timeout(self._idle_until - env.now)
                clock = env.now
            step_start = clock
            n_tok = len(rows)
            if static:
                first, end = bounds[step], bounds[step + 1]
                ids, gates = ids_rows[first:end], gates_rows[first:end]  # [B, L, k]
                request_ids, phase = request_rows[first:end], phase_rows[first:end]  # [B]
                step_lookahead = [(d, cols[first:end]) for d, cols in lookahead_rows]
            else:
                ids, gates = ids_all[rows], gates_all[rows]  # [B, L, k]
                request_ids, phase = trace.request_id[rows], trace.phase[rows]  # [B]
                step_lookahead = [(d, cols[rows]) for d, cols in lookahead]
            if single:
                experts, tokens, step_keys = sorted_all[step], ones, keys_all[step]
            else:
                experts, tokens = step_experts(ids, n_experts)
                step_keys = [[layer * n_experts + e for e in layer_experts]
                             for layer, layer_experts in enumerate(experts)]
            # per-layer lookahead views, built in one C loop each: [L] of [B, k]
            ahead_by_layer = [(d, list(cols.swapaxes(0, 1))) for d, cols in step_lookahead]
            ctx.begin_step(step, request_ids, phase, rows, ids, gates)
            policy.begin_step(ctx)
            memo = step_memo.get(n_tok)
            if memo is None:
                memo = step_memo[n_tok] = (compute.layer_other_s(n_tok), decision.seconds(n_tok))
            other_s, decision_s = memo
            # non-expert work of layer 0
            buf += pack(k_compute, clock, clock + other_s, step, 0, -1, 0, r_gpu, d_other, n_tok)
            clock += other_s
            if not (defer and (link.running is None and not copies
                                  or link.running is not None and clock < link.busy_until)):
                yield env.timeout(clock - env.now)
                clock = env.now
            for layer in range(n_layers):
                layer_experts, layer_tokens, keys = experts[layer], tokens[layer], step_keys[layer]
                for d, la in ahead_by_layer:
                    ahead[d] = la[layer]  # [B, k]
                # ctx.set_layer's work, inlined (lists of plain ints; routing, gates: from
                # the step's arrays, see LayerContext.begin_step)
                ctx.layer, ctx.experts, ctx.tokens_per_expert, ctx.keys = \
                    layer, layer_experts, layer_tokens, keys
                on_layer(ctx)
                ready = clock + decision_s  # when the policy's decisions are made
                protected = keys  # a few keys: a list is as fast as a set here
                outcome: list[int] = []
                wait: list[Copy] = []
                missing: list[int] = []
                for key in keys:
                    if key in resident:
                        copy = unused.pop(key, None)
                        if copy is not None:
                            copy.used = True
                            log.set_detail(copy.row, "prefetch_used")
                            outcome.append(d_prefetch_hit)
                        else:
                            outcome.append(d_hit)
                    elif key in copies:
                        copy = copies[key]
                        if unused.pop(key, None) is not None:
                            copy.used = True
                        promote(copy)
                        wait.append(copy)
                        outcome.append(d_inflight)
                    else:
                        missing.append(key)
                        outcome.append(d_miss)
                to_submit: list[Copy] = []
                on_cpu: set[int] = _NO_KEYS
                if missing:
                    fetch, cpu, keep = place_and_admit(policy, ctx, missing, cache, layer,
                                                       evict, protected)
                    on_cpu = set(cpu)
                    kept = set()
                    for key in keep:
                        if cache.free_slots(layer) > 0:
                            start_fetch(key)
                            copy = Copy(key, expert_bytes, "demand", step, layer, ready)
                            if host is not None:
                                copy.bytes_per_s = host.source_bytes_per_s(key)
                            copies[key] = copy
                            kept.add(key)
                            to_submit.append(copy)
                            wait.append(copy)
                    for key in fetch:
                        if key not in kept:  # not admitted, or no slot: a scratch-buffer copy
                            copy = Copy(key, expert_bytes, "stream", step, layer, ready)
                            if host is not None:
                                copy.bytes_per_s = host.source_bytes_per_s(key)
                            to_submit.append(copy)
                            wait.append(copy)
                plan = prefetch(ctx)
                if plan.cancel and env.now < clock:  # a cancel acts at env.now: catch up
                    yield env.timeout(clock - env.now)
                    clock = env.now
                for key in plan.cancel:
                    copy = copies.get(key)
                    validate_cancel(policy.name, key, copy and copy.purpose, protected)
                    link.cancel(copy)
                    del copies[key]
                    unused.pop(key, None)
                    cache.remove(key)
                    policy.on_evict(key)
                if plan.keys:
                    fetch = plan_with_room(policy.name, plan.keys, cache, n_layers, n_experts,
                                           evict, protected)
                    for key in fetch:
                        start_fetch(key)
                        copy = Copy(key, expert_bytes, "prefetch", step, layer, ready)
                        if host is not None:
                            copy.bytes_per_s = host.source_bytes_per_s(key)
                        copies[key] = copy
                        unused[key] = copy
                        to_submit.append(copy)
                # the decision takes decision_s; copies start when it is made (no extra event)
                if decision_s > 0:
                    buf += pack(k_policy, clock, ready, step, layer, -1, 0, r_decision, d_decision,
                                n_tok)
                if to_submit:
                    submit_all(to_submit)
                waited = False
                for copy in wait:  # the link serves them one at a time: wait in turn
                    if copy.state != "done":
                        waited = True
                        yield completion(copy)
                if waited:
                    # the copies may land before the policy's decision ends: no stall then
                    clock = max(env.now, ready)
                    if clock > ready:
                        buf += pack(k_stall, ready, clock, step, layer, -1, 0, r_gpu, d_wait, 0)
                    ready = clock
                if check:
                    self._check_layer(keys, on_cpu, wait)
                # experts: GPU ones in sequence, CPU ones in parallel on the host
                if on_cpu:
                    end = self._log_experts(step, layer, ready, layer_experts, keys,
                                            layer_tokens, outcome, on_cpu)
                else:  # the usual case: every expert on the GPU (the same rows, inlined)
                    end = ready
                    # equal lengths by construction; strict=True would cost ~0.1 us a layer
                    for e, t, how in zip(layer_experts, layer_tokens, outcome, strict=False):
                        dt = gpu_memo.get(t)
                        if dt is None:
                            dt = gpu_memo[t] = compute.gpu_expert_s(t)
                        buf += pack(k_compute, end, end + dt, step, layer, e, 0, r_gpu, how, t)
                        end += dt
                if layer + 1 < n_layers:  # the next layer's non-expert work follows at once
                    buf += pack(k_compute, end, end + other_s, step, layer + 1, -1, 0, r_gpu,
                                d_other, n_tok)
                    end += other_s
                clock = end
                if not (defer and (link.running is None and not copies
                                  or link.running is not None and clock < link.busy_until)):
                    yield env.timeout(end - env.now)
                    clock = env.now
            policy.end_step(ctx)
            buf += pack(k_step, step_start, clock, step, -1, -1, 0, r_none, d_step, n_tok)
        self.end_s = float(clock)
        if copies and env.now < clock:
            yield env.timeout(clock - env.now)
        # copies still queued or running when the last step ends are abandoned (logged as such)
        for copy in list(copies.values()):
            link.cancel(copy)

    def _log_experts(self, step: int, layer: int, start_s: float, experts: list[int],
                     keys: list[int], tokens: list[int], outcome: list[int], on_cpu: set[int]
                     ) -> float:
        """Log a layer's experts when some run on the host: GPU ones one after another on the GPU
        stream, CPU ones one after another on the host, both from ``start_s``; returns when both
        are done."""
        compute, gpu_memo, cpu_memo = self.compute, self._gpu_memo, self._cpu_memo
        buf, pack = self.log.buf, self.log.pack
        gpu_t = cpu_t = start_s
        for e, key, t, how in zip(experts, keys, tokens, outcome, strict=True):
            if key in on_cpu:
                dt = cpu_memo.get(t)
                if dt is None:
                    dt = cpu_memo[t] = compute.cpu_expert_s(t)
                buf += pack(_K_COMPUTE, cpu_t, cpu_t + dt, step, layer, e, 0, _R_CPU, _D_CPU, t)
                cpu_t += dt
            else:
                dt = gpu_memo.get(t)
                if dt is None:
                    dt = gpu_memo[t] = compute.gpu_expert_s(t)
                buf += pack(_K_COMPUTE, gpu_t, gpu_t + dt, step, layer, e, 0, _R_GPU, how, t)
                gpu_t += dt
        return max(gpu_t, cpu_t)

    def _steps(self):  # noqa: ANN202 - generator of each step's rows
        self._idle_until = 0.0
        batcher = self.batcher
        if batcher is None:
            yield from self.schedule
            return
        env = self.env
        while not batcher.done():
            now = max(env.now, self._idle_until)
            rows = batcher.next_step(now)
            if rows.size:
                self._idle_until = now
                self.schedule.append(rows)
                yield rows
            else:
                self._idle_until = max(now, batcher.next_arrival_s())

    def _check_layer(self, keys: list[int], on_cpu: set[int], wait: list[Copy]) -> None:
        cache = self.cache
        assert len(cache) <= cache.capacity_slots, "cache over capacity"
        streamed = {c.key for c in wait if c.purpose == "stream" and c.state == "done"}
        for key in keys:
            assert key in cache.resident or key in on_cpu or key in streamed, \
                f"key {key} not ready when its layer computes"
