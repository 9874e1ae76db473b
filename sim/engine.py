"""The simulator's engine: replays a trace through a policy on a hardware profile and a runtime.

A plain loop runs the GPU stream step by step and layer by layer; the contract's calls go through
the one protocol every engine drives (:class:`policies.protocol.LayerProtocol`), and this engine
supplies how time passes: a :class:`~sim.link.DirectLink` serves the copies (its one pending
event kept in two attributes, processed up to the GPU stream's clock before each decision; the
SimPy-driven :class:`~sim.link.Link` is the reference it matches, ``simpy_link``), the host CPU runs
CPU-placed experts, and the runtime's implementation profile (:class:`~sim.system.SystemProfile`)
adds its overheads and decides what overlaps. Per MoE layer:

1. the non-expert work (attention over the KV cache, router, norms: :mod:`sim.compute`) ends
   and the routing is known; the policy decides (its declared decision time), and the copies it
   asked for are queued, demand before prefetch (one transfer for the layer's demand copies when
   the runtime batches them);
2. CPU-placed experts start on the host at once, on ``cpu_cores`` (as many at a time as the
   runtime's threads per expert allow), in parallel with the copies and the GPU;
3. GPU experts: when the runtime computes while copying (ProMoE-style), the resident ones run
   first and each missing one as soon as its copy lands; otherwise the layer waits for all its
   copies (a *stall*), then runs them one after another. A runtime that does not overlap copies
   with compute (one stream, or pageable memory) waits for every copy in flight, prefetches
   included. Each wait for a copy costs the runtime's ``copy_sync_s`` when it ends. With staging
   buffers (``SystemProfile.staging_buffers`` B > 0) a prefetch for layer ``m`` is held back
   (not submitted to the link) until layer ``m - B`` has finished its experts: B = 2 is
   double buffering, the next layer's copies overlapping this layer's compute;
4. the layer ends when GPU and CPU experts are both done; the next layer's non-expert work
   follows on the GPU stream.

Events: one per copy (per chunk when chunked); nothing else is scheduled. Event-log rows are
packed records (:mod:`sim.eventlog`), folded step by step at ``log=steps|summary``. Fast paths a
policy declares (``Policy.quiet_no_prefetch``, ``Policy.gpu_admit_all``) skip calls it does not
need; ``declared_fast_paths = False`` makes every call (the tests compare both, and both links,
row for row: ``tests/sim/test_fast_paths.py``). ``benchmarks/bench_sim.py`` times the issue's
cases (with a checksum of the log and summary on each side of ``--ref``),
``benchmarks/bench_memory.py`` the peak memory of a long run.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import simpy
from moe_offload_lab.policies.base import Policy
from moe_offload_lab.policies.cache import SlotCache
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.needs import step_experts
from moe_offload_lab.policies.protocol import LayerProtocol, Transfers
from moe_offload_lab.sim.compiled.eligibility import ENGINES, CompiledPlan, compiled_plan
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.eventlog import DETAIL, KIND, RESOURCE, ROW, EventLog
from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.sim.host import HostTier
from moe_offload_lab.sim.link import Copy, DirectLink, Link
from moe_offload_lab.sim.system import SystemProfile, with_policy_runtime
from moe_offload_lab.sim.workload import ContinuousBatcher, static_batches
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

_K_COMPUTE, _K_STALL, _R_GPU = KIND["compute"], KIND["stall"], RESOURCE["gpu"]
_R_CPU, _D_CPU, _D_WAIT = RESOURCE["cpu"], DETAIL["cpu"], DETAIL["wait"]


def _attended(position: np.ndarray, request_ids: np.ndarray) -> tuple[int, int]:
    """One step's attention work: the sum over its tokens of the context each attends to
    (position + 1), and the KV-cache entries it reads (per request, its longest context).
    ``position``, ``request_ids`` [B], each request's rows contiguous and ascending."""
    ctx = position.astype(np.int64) + 1  # [B]
    last = np.r_[request_ids[1:] != request_ids[:-1], True]  # [B] a request's last row
    return int(ctx.sum()), int(ctx[last].sum())


def _attended_by_step(position: np.ndarray, request_ids: np.ndarray, bounds: list[int]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_attended` of every step of a static schedule at once: ``position`` and
    ``request_ids`` [R] are the schedule's rows in order, step ``s`` holding
    ``bounds[s]:bounds[s + 1]``. Returns two arrays [S]."""
    starts = np.asarray(bounds[:-1], dtype=np.int64)  # [S]
    ctx = position.astype(np.int64) + 1  # [R]
    last = np.r_[request_ids[1:] != request_ids[:-1], True]  # [R]
    last[np.asarray(bounds[1:], dtype=np.int64) - 1] = True  # a step's last row ends a run
    return np.add.reduceat(ctx, starts), np.add.reduceat(np.where(last, ctx, 0), starts)


def _lowbit_bytes(spec: ModelSpec, policy: Policy) -> int:
    """Bytes of a low-precision expert copy (``policy.lowbit_fraction`` of an expert's)."""
    fraction = getattr(policy, "lowbit_fraction", 1.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction <= 1:
        raise ConfigError(f"policy {policy.name!r}: lowbit_fraction must lie in (0, 1], "
                          f"got {fraction!r}")
    return max(1, int(round(spec.expert_bytes * fraction)))


@dataclass
class EngineResult:
    """A finished run: the event log frame and the run's parameters.

    With ``log`` ``steps`` or ``summary`` (:mod:`sim.eventlog`), ``events`` holds the kept
    steps' rows only (none for ``summary``), ``step_table`` the step frame of every step and
    ``totals`` the counts :func:`sim.metrics.summarize` needs; both are None with ``full`` (they
    come from ``events``). ``rows``: rows logged in all.
    """

    events: pd.DataFrame
    makespan_s: float
    tokens: int
    steps: int
    capacity_slots: int
    expert_bytes: int
    step_table: pd.DataFrame | None = None
    totals: dict[str, Any] | None = None
    rows: int = 0


class Engine(Transfers):
    """Simulate ``trace`` under ``policy`` with a ``capacity_slots`` GPU expert cache.

    ``batch`` requests run together (static batching, :func:`sim.workload.static_batches`) unless
    an explicit ``schedule`` (trace rows per step) is given, or a ``batcher``
    (:class:`sim.workload.ContinuousBatcher`) that picks each step's rows at its start (policies
    then get no schedule in ``reset``). ``preload`` fills the cache before the
    first step (layer-major order, free of charge). ``check`` asserts the engine's invariants at
    every layer (for tests). ``chunk_mb`` > 0 moves copies in chunks of at most that many MB
    (1e6 bytes) so a demand copy can overtake a running prefetch (:class:`~sim.link.Link`).
    ``host`` (:class:`sim.host.HostTier`) models host DRAM over NVMe when the experts do not all
    fit in DRAM: each copy then runs at its source's bandwidth. ``system`` is the runtime's
    implementation profile (None: :meth:`~sim.system.SystemProfile.ideal`, no overheads).
    ``log`` is the event log's level (``full``, ``steps`` or ``summary``, :mod:`sim.eventlog`),
    ``sample_rows`` the most rows ``steps`` keeps (whole steps at an even stride).
    """

    # False (tests): set the link's clock to the GPU stream's at every layer, not only process
    # its events due by then; timing must not change
    defer_timeouts = True
    # True (tests, benchmarks): serve copies on the SimPy-driven reference link
    # (:class:`~sim.link.Link`) instead of the direct one (:class:`~sim.link.DirectLink`); the
    # event log must not change
    simpy_link = False
    # False (tests): make every policy call, also those the policy declares it does not need
    # (LayerProtocol's fast_paths)
    declared_fast_paths = True

    def __init__(self, spec: ModelSpec, trace: Trace, policy: Policy, hardware: HardwareProfile,
                 capacity_slots: int, batch: int = 1, *,
                 schedule: Sequence[np.ndarray] | None = None,
                 batcher: ContinuousBatcher | None = None,
                 preload: bool = False, prefill: bool = True, check: bool = False,
                 chunk_mb: float = 0, host: HostTier | None = None,
                 system: SystemProfile | None = None, log: str = "full",
                 sample_rows: int = 50_000, engine: str = "auto") -> None:
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
        system = with_policy_runtime(system, policy)  # e.g. PreScope's double buffering
        self.compute = ComputeModel(spec, hardware, system)
        self.system = self.compute.system
        self.host = host
        self.log = EventLog(log, sample_rows)
        if engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.engine_mode = engine
        self.engine_used = ""  # after run: "compiled" or "python"
        self.engine_reason = ""  # after run: why not compiled (when eligibility was asked)

    # ---- run ------------------------------------------------------------------------------------
    def run(self) -> EngineResult:
        """Run the whole schedule; returns the event log."""
        spec, policy = self.spec, self.policy
        n_layers, n_experts = spec.num_moe_layers, spec.num_experts
        policy.reset(spec, self.capacity_slots, self.compute.cost_model(), trace=self.trace,
                     schedule=None if self.batcher is not None else self.schedule)
        self.cache = SlotCache(self.capacity_slots, n_experts, n_layers, policy.partition_slots)
        self.protocol = LayerProtocol(policy, self.cache, self, codes=DETAIL,
                                      fast_paths=self.declared_fast_paths)
        # HOBBIT: keys whose copy is low precision move this many bytes (policies.base.LOWBITS)
        self._lowbit = self.protocol.lowbit
        self._lowbit_bytes = _lowbit_bytes(spec, policy)
        link_args = (self.compute.link_bytes_per_s, self.compute.link_latency_s, n_experts,
                     self.log, None, self.chunk_bytes)
        link_kwargs = {"engines": self.hardware.copy_engines, "slot_done": self.protocol.copy_done}
        if self.simpy_link:
            self.env = simpy.Environment()
            self.link: Link = Link(self.env, *link_args, **link_kwargs)
        else:
            self.link = DirectLink(*link_args, **link_kwargs)
        self._idle_until, self._served = 0.0, -1
        # staging buffers (SystemProfile.staging_buffers): prefetches held until the layer whose
        # buffer they reuse has run, as (absolute layer position that frees it, copy)
        self._staging = self.system.staging_buffers if self.system.overlaps else 0
        self._held: list[tuple[int, Copy]] = []
        # Prophet's hierarchy: the policy's TieredRule keeps and promotes host DRAM (sim.host)
        rule = getattr(policy, "tiered_rule", None)
        self._promote = self.host is not None and rule is not None
        if self._promote:
            self.host.bind_rule(rule, spec.expert_bytes)
        if self.preload:
            for key in range(n_layers * n_experts):
                if self.cache.free_slots() <= 0:
                    break
                if self.cache.free_slots(key // n_experts) > 0:
                    self.cache.insert(key)
                    policy.on_fetch_done(key)
        plan = self._compiled_plan()
        gc_enabled = gc.isenabled()
        gc.disable()  # millions of short-lived objects: collection passes cost ~5% for nothing
        try:
            if plan is not None:
                from moe_offload_lab.sim.compiled.runner import run_compiled

                run_compiled(self, plan)
            else:
                self._main()
        finally:
            if gc_enabled:
                gc.enable()
        tokens = int(sum(len(rows) for rows in self.schedule))
        log = self.log
        step_table = log.step_table()  # folds what is left first
        return EngineResult(log.to_frame(), self.end_s, tokens, len(self.schedule),
                            self.capacity_slots, spec.expert_bytes, step_table, log.totals,
                            len(log))

    def _compiled_plan(self) -> CompiledPlan | None:
        """The compiled engine's plan when it runs this run (``engine`` ``auto`` and eligible,
        or ``compiled``: ineligible is then a ConfigError), else None; sets ``engine_used`` and
        ``engine_reason``."""
        plan: CompiledPlan | str | None = None
        if self.engine_mode != "python":
            plan = compiled_plan(self)
            if isinstance(plan, str):
                if self.engine_mode == "compiled":
                    raise ConfigError(f"engine=compiled: this run cannot be compiled: {plan}")
                self.engine_reason, plan = plan, None
        self.engine_used = "compiled" if plan is not None else "python"
        return plan

    # ---- Transfers: the protocol's copy hooks (policies.protocol) -------------------------------
    def start_copy(self, key: int, purpose: str, layer: int) -> Copy:
        """A copy of ``key`` that starts once the layer's decisions are made (submitted with the
        layer's other copies when the protocol returns)."""
        num_bytes = self._expert_bytes
        if self._lowbit and key in self._lowbit:  # a low-precision copy (HOBBIT)
            num_bytes = self._lowbit_bytes
        copy = Copy(key, num_bytes, purpose, self._step, layer,
                    self._clock + self._decision_s)  # the decision's end
        if self.host is not None:
            copy.bytes_per_s = self.host.source_bytes_per_s(key, copy.ready_s)
        if self._staging and purpose == "prefetch":
            gate = self._buffer_free_at(key, layer)
            if gate >= self._step * self.n_layers + layer:  # its buffer is still in use
                self._held.append((gate, copy))
                return copy
        self._to_submit.append(copy)
        return copy

    def _buffer_free_at(self, key: int, layer: int) -> int:
        """The absolute layer position (``step * L + layer``) whose experts must have run before
        a prefetch of ``key``, issued at ``layer``, may use its staging buffer: the key's own
        next position (this step, or the next one for a layer not after ``layer``) minus B."""
        n_layers = self.n_layers
        target = key // self.spec.num_experts
        position = self._step * n_layers + target + (n_layers if target <= layer else 0)
        return position - self._staging

    def _release(self, position: int, t: float) -> None:
        """Layer ``position`` finished its experts at ``t``: submit the held prefetches whose
        staging buffer it frees, starting no earlier than ``t``."""
        ready, held = [], []
        for gate, copy in self._held:
            if gate > position:
                held.append((gate, copy))
            elif copy.state == "new":  # not cancelled meanwhile
                copy.ready_s = max(copy.ready_s, t)
                ready.append(copy)
        self._held[:] = held  # in place: the engine loop holds a reference
        if ready:
            self.link.submit_all(ready)

    def cancel_copy(self, handle: Copy) -> None:
        """Abandon a queued or running prefetch now (at the decision's time)."""
        self.link.cancel(handle)

    def awaited(self, handle: Copy) -> None:
        """A layer needs this copy: demand priority from now on."""
        self.link.promote(handle)

    def prefetch_used(self, handle: Copy) -> None:
        """Its log row (now or at completion) says ``prefetch_used``."""
        handle.used = True
        if handle.row >= 0:
            self.log.mark_prefetch_used(handle.row, handle.num_bytes)

    def before_cancel(self) -> None:
        """A cancel acts at the link's time: bring it up to the decision's."""
        self.link.sync(self._clock)

    def _writebacks(self, evicted: int) -> None:
        """``evicted`` slots were freed for this layer's copies: the first that many slot copies
        also carry the evicted experts back to the host (``writeback_evicted``)."""
        seconds = self._expert_bytes / self.compute.link_bytes_per_s
        for copy in self._to_submit:
            if evicted <= 0:
                return
            if copy.purpose != "stream":
                copy.extra_s = seconds
                evicted -= 1

    def _submit(self, copies: list[Copy]) -> None:
        """Queue the layer's copies; a batching runtime sends its demand copies as one."""
        if self.system.batched_copies:
            demand = [c for c in copies if c.purpose != "prefetch"]
            if len(demand) > 1:
                copies = [self.link.batch(demand), *(c for c in copies if c.purpose == "prefetch")]
        self.link.submit_all(copies)

    def _main(self) -> None:  # noqa: C901 - the engine's timing loop in one place
        log, cache, link = self.log, self.cache, self.link
        spec, compute, trace, protocol = self.spec, self.compute, self.trace, self.protocol
        n_layers, n_experts = spec.num_moe_layers, spec.num_experts
        self._expert_bytes = spec.expert_bytes
        ctx = LayerContext(spec, cache)
        decision = self.policy.decision_cost
        ids_all, gates_all = trace.expert_ids, trace.gate_weights
        gpu_memo = self._gpu_memo = {}  # tokens -> seconds of one expert
        self._cpu_memo = {}
        decision_memo: dict[int, float] = {}  # batch size -> decision_s
        buf, pack = log.buf, log.pack  # buf += pack(row): see EventLog.add_codes for the columns
        k_compute, k_stall, k_policy, k_step = (KIND[n] for n in (
            "compute", "stall", "policy", "step"))
        r_gpu, r_none, r_decision = RESOURCE["gpu"], RESOURCE["none"], RESOURCE[decision.where]
        d_other, d_decision, d_step, d_wait = (DETAIL[n] for n in (
            "other", "decision", "step", "wait"))
        ahead: dict[int, np.ndarray] = {}
        ctx.lookahead = ahead  # filled in place at every layer
        reads = self.policy.lookahead_distances  # None: every distance the trace carries
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
            context_steps, kv_steps = _attended_by_step(trace.position[rows_all], request_rows,
                                                        bounds)  # [S] each
            other_steps = compute.layer_other_steps(np.diff(bounds), context_steps,
                                                    kv_steps).tolist()  # [S]
        # batch-1 schedules: every step's sorted expert lists and keys in one numpy call
        single = static and all(len(r) == 1 for r in self.schedule)
        if single:
            sorted_ids = np.sort(ids_rows, axis=2)  # [S, L, k]
            sorted_all = sorted_ids.tolist()  # [S][L][k]
            offsets = (np.arange(n_layers, dtype=np.int64) * n_experts)[None, :, None]  # [1, L, 1]
            keys_all = (sorted_ids.astype(np.int64) + offsets).tolist()  # [S][L][k]
            ones = [[1] * spec.top_k] * n_layers
        to_submit: list[Copy] = []
        self._to_submit = to_submit
        layer_protocol, advance, link_clock = protocol.layer, link.advance, link.env
        submit = self._submit if self.system.batched_copies else link.submit_all
        system = self.system
        serial, reorder = not system.overlaps, system.compute_while_copying
        writeback, evicted = system.writeback_evicted, 0
        sync_s = system.copy_sync_s
        self._lanes = compute.cpu_lanes
        check, wait_for = self.check, link.wait
        held = self._held  # prefetches waiting for a staging buffer (updated in place)
        promote = self.host.promote if self._promote else None  # Prophet's host tiers
        # folding logs (log=steps|summary): fold at a step's end once the buffer is this long
        fold_bytes = log.fold_rows * ROW.size if log.folds else float("inf")
        # ``clock`` is the GPU stream's time; the link's runs behind it and catches up (processes
        # its events due by then) before each decision, so a copy submitted at the decision
        # starts at its ``ready_s`` (an absolute time) and timing is exact.
        eager = not self.defer_timeouts  # tests: set the link's clock at every layer's end
        clock = 0.0
        step = -1
        while True:
            rows = self._next_rows(clock)
            if rows is None:
                break
            step += 1
            clock = max(clock, self._idle_until)  # continuous batching: the next arrival
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
            self._step = step
            ctx.begin_step(step, request_ids, phase, rows, ids, gates)
            protocol.begin_step(ctx)
            if static:
                other_s = other_steps[step]
            else:
                other_s = compute.layer_other_s(n_tok, *_attended(trace.position[rows],
                                                                  request_ids))
            decision_s = decision_memo.get(n_tok)
            if decision_s is None:
                decision_s = decision_memo[n_tok] = decision.seconds(n_tok)
            self._decision_s = decision_s
            # non-expert work of layer 0
            buf += pack(k_compute, clock, clock + other_s, step, 0, -1, 0, r_gpu, d_other, n_tok)
            clock += other_s
            for layer in range(n_layers):
                layer_experts, layer_tokens, keys = experts[layer], tokens[layer], step_keys[layer]
                for d, la in ahead_by_layer:
                    ahead[d] = la[layer]  # [B, k]
                # ctx.set_layer's work, inlined (lists of plain ints; routing, gates: from
                # the step's arrays, see LayerContext.begin_step)
                ctx.layer, ctx.experts, ctx.tokens_per_expert, ctx.keys = \
                    layer, layer_experts, layer_tokens, keys
                if eager:
                    link.sync(clock)
                elif link.next_s <= clock:
                    advance(clock)  # link events due before the routing is known
                self._clock = clock  # start_copy and before_cancel read it
                ready = clock + decision_s  # when the policy's decisions are made
                if writeback:
                    evicted = protocol.n_evicted
                outcome, wait, on_cpu = layer_protocol(ctx)
                if writeback and protocol.n_evicted > evicted:
                    self._writebacks(protocol.n_evicted - evicted)
                # the decision takes decision_s; copies start when it is made (no extra event)
                if decision_s > 0:
                    buf += pack(k_policy, clock, ready, step, layer, -1, 0, r_decision, d_decision,
                                n_tok)
                if to_submit:
                    submit(to_submit)
                    to_submit.clear()
                if promote is not None:  # NVMe-to-DRAM promotions the tiered rule chooses
                    promote(ready, cache)
                if serial:  # one stream: every copy in flight lands before the experts run
                    wait = [*wait, *protocol.copies.values()]
                if on_cpu:
                    end = self._layer_experts(step, layer, ready, layer_experts, keys,
                                              layer_tokens, outcome, wait, on_cpu)
                elif reorder and wait:
                    end = self._compute_while_copying(step, layer, ready, layer_experts, keys,
                                                      layer_tokens, outcome, wait)
                else:  # the usual case: every expert on the GPU once its copies landed
                    waited = False
                    for copy in wait:  # the link serves them one at a time: wait in turn
                        if copy.state != "done":
                            waited = True
                            wait_for(copy)
                    # copies landing before the policy's decision ends cost no stall
                    if waited and link_clock.now > ready:
                        resume = link_clock.now + sync_s
                        buf += pack(k_stall, ready, resume, step, layer, -1, 0, r_gpu, d_wait, 0)
                        ready = resume
                    end = ready
                    # equal lengths by construction; strict=True would cost ~0.1 us a layer
                    for e, t, how in zip(layer_experts, layer_tokens, outcome, strict=False):
                        dt = gpu_memo.get(t)
                        if dt is None:
                            dt = gpu_memo[t] = compute.gpu_expert_s(t)
                        buf += pack(k_compute, end, end + dt, step, layer, e, 0, r_gpu, how, t)
                        end += dt
                if check:
                    self._check_layer(keys, on_cpu, wait)
                if held:  # staging buffers: this layer's buffer is free from ``end`` on
                    self._release(step * n_layers + layer, end)
                if layer + 1 < n_layers:  # the next layer's non-expert work follows at once
                    buf += pack(k_compute, end, end + other_s, step, layer + 1, -1, 0, r_gpu,
                                d_other, n_tok)
                    end += other_s
                clock = end
            protocol.end_step(ctx)
            buf += pack(k_step, step_start, clock, step, -1, -1, 0, r_none, d_step, n_tok)
            if len(buf) > fold_bytes:
                log.fold()
        self.end_s = float(clock)
        # copies that land by the last step's end land (their slots become resident); those
        # still queued or running then are abandoned (logged as such). Landing them first
        # matters: a copy landing after abandon_all would find no booking (it raised KeyError)
        link.sync(clock)
        leftover = protocol.abandon_all()
        self._held.clear()
        for copy in leftover:
            link.cancel(copy)
        link.drain()

    def _layer_experts(self, step: int, layer: int, ready: float, experts: list[int],
                       keys: list[int], tokens: list[int], outcome: list[int], wait: list[Copy],
                       on_cpu: set[int] | frozenset[int]) -> float:
        """Run a layer's experts from ``ready`` (the decision's end) when some run on the host;
        returns when the last one is done.

        CPU experts start at once on the host's lanes (each at ``1 / lanes`` of its throughput).
        GPU experts: with ``compute_while_copying`` the ones not waiting for a copy first, then
        each copied one once its copy lands (in the order the layer waits for them); otherwise
        all of them once every copy landed. Each wait that stalls the GPU stream ends
        ``copy_sync_s`` after the copy lands.
        """
        compute, cpu_memo = self.compute, self._cpu_memo
        buf, pack, sync_s = self.log.buf, self.log.pack, self.system.copy_sync_s
        cpu_end = ready
        if on_cpu:
            lanes = self._lanes
            lane_t = [ready] * lanes
            for e, key, t in zip(experts, keys, tokens, strict=True):
                if key in on_cpu:
                    dt = cpu_memo.get(t)
                    if dt is None:
                        dt = cpu_memo[t] = compute.cpu_expert_s(t)
                    i = lane_t.index(min(lane_t))
                    start = lane_t[i]
                    lane_t[i] = start + dt * lanes
                    buf += pack(_K_COMPUTE, start, lane_t[i], step, layer, e, 0, _R_CPU, _D_CPU, t)
            cpu_end = max(lane_t)
        gpu = [i for i, key in enumerate(keys) if key not in on_cpu]
        experts, keys = [experts[i] for i in gpu], [keys[i] for i in gpu]
        tokens, outcome = [tokens[i] for i in gpu], [outcome[i] for i in gpu]
        if self.system.compute_while_copying and wait:
            end = self._compute_while_copying(step, layer, ready, experts, keys, tokens,
                                              outcome, wait)
            return max(end, cpu_end)
        for copy in wait:
            if copy.state != "done":
                self.link.wait(copy)
        landed = max((c.end_s for c in wait), default=ready)
        t = self._stall(step, layer, ready, landed + sync_s) if landed > ready else ready
        for e, tok, how in zip(experts, tokens, outcome, strict=True):
            t = self._gpu_expert(step, layer, t, e, tok, how)
        return max(t, cpu_end)

    def _compute_while_copying(self, step: int, layer: int, ready: float, experts: list[int],
                               keys: list[int], tokens: list[int], outcome: list[int],
                               wait: list[Copy]) -> float:
        """:meth:`_layer_experts` when every expert runs on the GPU and the runtime computes
        while copying (the hot case of such runtimes, without the CPU bookkeeping)."""
        buf, pack, memo, sync_s = self.log.buf, self.log.pack, self._gpu_memo, \
            self.system.copy_sync_s
        copy_of = {c.key: c for c in wait}
        t = ready
        later = []
        for e, key, tk, how in zip(experts, keys, tokens, outcome, strict=False):
            copy = copy_of.get(key)
            if copy is not None:
                later.append((copy, e, tk, how))
                continue
            dt = memo.get(tk)
            if dt is None:
                dt = memo[tk] = self.compute.gpu_expert_s(tk)
            buf += pack(_K_COMPUTE, t, t + dt, step, layer, e, 0, _R_GPU, how, tk)
            t += dt
        for copy, e, tk, how in later:
            if copy.state != "done":
                self.link.wait(copy)
            if copy.end_s > t:
                resume = copy.end_s + sync_s
                buf += pack(_K_STALL, t, resume, step, layer, -1, 0, _R_GPU, _D_WAIT, 0)
                t = resume
            dt = memo.get(tk)
            if dt is None:
                dt = memo[tk] = self.compute.gpu_expert_s(tk)
            buf += pack(_K_COMPUTE, t, t + dt, step, layer, e, 0, _R_GPU, how, tk)
            t += dt
        return t

    def _gpu_expert(self, step: int, layer: int, start: float, expert: int, tokens: int,
                    how: int) -> float:
        """Log one GPU expert from ``start``; returns its end."""
        dt = self._gpu_memo.get(tokens)
        if dt is None:
            dt = self._gpu_memo[tokens] = self.compute.gpu_expert_s(tokens)
        self.log.buf += self.log.pack(_K_COMPUTE, start, start + dt, step, layer, expert, 0,
                                      _R_GPU, how, tokens)
        return start + dt

    def _stall(self, step: int, layer: int, start: float, end: float) -> float:
        """Log the GPU stream waiting for copies from ``start`` to ``end``; returns ``end``."""
        self.log.buf += self.log.pack(_K_STALL, start, end, step, layer, -1, 0, _R_GPU, _D_WAIT,
                                      0)
        return end

    def _next_rows(self, clock: float) -> np.ndarray | None:
        """The rows of the next step starting at ``clock`` (None: the run is over). With a
        batcher, a step waits for the next arrival when nobody is running (``_idle_until``)."""
        batcher = self.batcher
        if batcher is None:
            self._idle_until = clock
            self._served += 1
            index = self._served
            return self.schedule[index] if index < len(self.schedule) else None
        now = max(clock, self._idle_until)
        while not batcher.done():
            rows = batcher.next_step(now)
            if rows.size:
                self._idle_until = now
                self.schedule.append(rows)
                return rows
            now = max(now, batcher.next_arrival_s())
            self._idle_until = now
        return None

    def _check_layer(self, keys: list[int], on_cpu: set[int], wait: list[Copy]) -> None:
        cache = self.cache
        assert len(cache) <= cache.capacity_slots, "cache over capacity"
        streamed = {c.key for c in wait if c.purpose == "stream" and c.state == "done"}
        for key in keys:
            assert key in cache.resident or key in on_cpu or key in streamed, \
                f"key {key} not ready when its layer computes"
