"""The compiled engine's driver: the Python side of :mod:`sim.compiled.kernel`.

:func:`run_compiled` replaces :meth:`sim.engine.Engine._main` for an eligible run
(:mod:`sim.compiled.eligibility`). It builds the kernel's state from the engine after
``policy.reset`` and the optional preload (the resident keys and their LRU order), then runs the
schedule through :func:`~sim.compiled.kernel.run_steps`:

- static schedules: every step's inputs are gathered once (the same numpy calls as the Python
  engine's) and one call runs as many steps as fit in the output arrays, returning early at the
  end of a step that fills a folding log past :attr:`~sim.eventlog.EventLog.fold_rows`;
- continuous batching: the Python batcher picks each step's rows at its start, as in the Python
  engine, and one call runs that step.

After each call the rows are appended to the log's buffer as they are (the kernel writes
:data:`~sim.eventlog.ROW_DTYPE` records), prefetch rows logged by earlier calls and used now are
marked (:meth:`~sim.eventlog.EventLog.mark_prefetch_used`), and the log folds at the same step
ends as the Python engine's. At the end the Python objects a caller may read are brought to the
state the Python engine leaves: the cache's resident keys, the LRU order, the planner's wanted
keys, the protocol's counters, the host tier's DRAM order and NVMe reads, and the link's clock
and event count. Two differences, documented: ``protocol.unused`` maps the never-used
prefetched keys to ``None`` rather than to their copy handles, and the predictor's last
:class:`~policies.prediction.Prediction` and the planner's ``version`` and last plan are not
replayed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
from moe_offload_lab.policies.protocol import PolicyViolation
from moe_offload_lab.sim.compiled.eligibility import CompiledPlan
from moe_offload_lab.sim.eventlog import RESOURCE, ROW, ROW_DTYPE

if TYPE_CHECKING:
    from moe_offload_lab.sim.engine import Engine

_MIN_ROWS = 1 << 15  # output rows of one call, at least
_IDS = np.int16  # expert ids as the kernel reads them (a ModelSpec has fewer than 2**15)


class _Run:
    """One compiled run's arrays and the calls that move rows into the engine's log."""

    def __init__(self, engine: Engine, plan: CompiledPlan) -> None:
        from moe_offload_lab.sim.compiled import kernel as kn

        self.kn, self.engine, self.log = kn, engine, engine.log
        spec, compute, system = engine.spec, engine.compute, engine.system
        n_layers, n_experts, k = spec.num_moe_layers, spec.num_experts, spec.top_k
        n_keys = n_layers * n_experts
        self.n_keys, self.kmax_per_token = n_keys, k
        self.expert_bytes = spec.expert_bytes
        self.ist = np.zeros(kn.I_SIZE, dtype=np.int64)
        self.fst = np.zeros(kn.F_SIZE, dtype=np.float64)
        self.kint = np.zeros((n_keys, kn.K_SIZE), dtype=np.int64)  # [L*E, fields]
        self.kflt = np.zeros((n_keys, kn.C_FIELDS), dtype=np.float64)  # [L*E, fields]
        self.heap_code = np.zeros(4 * n_keys + 64, dtype=np.int64)  # [H]
        self.heap_key = np.zeros(4 * n_keys + 64, dtype=np.int64)
        self.wanted = np.zeros(n_experts + k + 1, dtype=np.int64)  # the planner's wanted keys
        ist, fst, kint = self.ist, self.fst, self.kint
        ist[kn.I_RUNNING] = ist[kn.I_HEAD] = ist[kn.I_TAIL] = -1
        fst[kn.F_NEXT], fst[kn.F_LAST_END] = np.inf, -1.0
        fst[kn.F_CUR_LATENCY] = compute.link_latency_s
        kint[:, kn.K_PREV] = kint[:, kn.K_NEXT] = kint[:, kn.K_ROW] = -1
        kint[:, kn.K_DPREV] = kint[:, kn.K_DNEXT] = -1
        ist[kn.I_DHEAD] = ist[kn.I_DTAIL] = -1
        order = list(engine.policy.replacement._order)  # the preload's residents, oldest first
        if set(order) != engine.cache.resident or engine.cache.in_flight:
            raise RuntimeError("compiled engine: the LRU order does not match the cache")
        self._link_list(order, kn.K_STATE, kn.K_PREV, kn.K_NEXT, kn.I_HEAD, kn.I_TAIL)
        ist[kn.I_LRU_N] = ist[kn.I_OCC] = len(order)
        host = engine.host
        if host is not None:  # host DRAM's experts, least recently used first
            dram = list(host._dram)
            self._link_list(dram, kn.K_DIN, kn.K_DPREV, kn.K_DNEXT, kn.I_DHEAD, kn.I_DTAIL)
            ist[kn.I_DN], ist[kn.I_NVME_READS] = len(dram), host.nvme_reads
        decision = engine.policy.decision_cost
        self.decision, self.decision_memo = decision, {}
        self.consts = np.zeros(kn.C_SIZE, dtype=np.int64)
        c = self.consts
        c[kn.C_LAYERS], c[kn.C_EXPERTS], c[kn.C_TOPK] = n_layers, n_experts, k
        c[kn.C_CAPACITY], c[kn.C_EXPERT_BYTES] = engine.capacity_slots, spec.expert_bytes
        c[kn.C_PIPELINED] = int(int(engine.hardware.copy_engines) > 1)
        c[kn.C_CWC] = int(bool(system.compute_while_copying))
        c[kn.C_GATE], c[kn.C_PLAN_N] = int(plan.gate), plan.plan_n
        c[kn.C_RES_DECISION] = RESOURCE[decision.where]
        c[kn.C_FOLD_ROWS] = self.log.fold_rows if self.log.folds else 0
        c[kn.C_HOST] = int(host is not None)
        c[kn.C_DRAM_CAP] = host.capacity_experts if host is not None else 0
        self.fconsts = np.array([compute.link_bytes_per_s, compute.link_latency_s,
                                 system.copy_sync_s,
                                 host.link_bytes_per_s if host is not None else 0.0,
                                 host.nvme_bytes_per_s if host is not None else 0.0],
                                dtype=np.float64)
        self.plan_n = plan.plan_n
        self.gpu_s = np.zeros(1, dtype=np.float64)  # [T + 1] one expert's seconds by tokens
        self.out = np.zeros(0, dtype=ROW_DTYPE)  # [N] the rows of one call
        self.marks = np.zeros(0, dtype=np.int64)

    def _link_list(self, keys: list[int], member: int, prev: int, nxt: int, head: int,
                   tail: int) -> None:
        """Mark ``keys`` (column ``member`` of ``kint``) and chain them, first to last, into a
        kernel list."""
        kint = self.kint
        for i, key in enumerate(keys):
            kint[key, member] = 1
            kint[key, prev] = keys[i - 1] if i else -1
            kint[key, nxt] = keys[i + 1] if i + 1 < len(keys) else -1
        if keys:
            self.ist[head], self.ist[tail] = keys[0], keys[-1]

    def _walk(self, head: int, nxt: int) -> list[int]:
        """The keys of a kernel list, first to last."""
        out, key = [], int(self.ist[head])
        while key >= 0:
            out.append(key)
            key = int(self.kint[key, nxt])
        return out

    # ---- inputs --------------------------------------------------------------------------------
    def decision_s(self, n_tok: int) -> float:
        """The policy's decision seconds for a step of ``n_tok`` tokens (memoised as the Python
        engine does)."""
        got = self.decision_memo.get(n_tok)
        if got is None:
            got = self.decision_memo[n_tok] = self.decision.seconds(n_tok)
        return got

    def prepare(self, max_tokens: int) -> None:
        """Room for steps of up to ``max_tokens`` tokens: the expert-time table and the output
        arrays (a step's rows are bounded, see ``C_STEP_ROOM``)."""
        if max_tokens >= len(self.gpu_s):
            compute = self.engine.compute
            self.gpu_s = np.array([0.0] + [compute.gpu_expert_s(t)
                                           for t in range(1, max_tokens + 1)])  # [T + 1]
        kn, c = self.kn, self.consts
        kmax = min(int(c[kn.C_EXPERTS]), max_tokens * self.kmax_per_token)
        room = 2 + int(c[kn.C_LAYERS]) * (2 + 3 * kmax + self.plan_n) + 2 * self.n_keys + 8
        c[kn.C_STEP_ROOM] = room
        if len(self.out) < room:
            rows = max(_MIN_ROWS, 2 * room)
            self.out = np.zeros(rows, dtype=ROW_DTYPE)  # [N]
            self.marks = np.zeros(rows, dtype=np.int64)

    # ---- calls ---------------------------------------------------------------------------------
    def call(self, ids: np.ndarray, la: np.ndarray, bounds: np.ndarray, step_ids: np.ndarray,
             other_s: np.ndarray, decision_s: np.ndarray) -> None:
        """Run every step given, in as many kernel calls as the output arrays need."""
        kn, ist, c = self.kn, self.ist, self.consts
        s, n_steps = 0, len(step_ids)
        while s < n_steps:
            self._begin_call()
            s = kn.run_steps(ist, self.fst, self.kint, self.kflt, self.heap_code,
                             self.heap_key, self.wanted, self.out, self.marks, c,
                             self.fconsts, ids, la, bounds, step_ids, other_s, decision_s,
                             self.gpu_s, s, n_steps)
            self._flush(fold=True)

    def finish(self) -> None:
        """The run's end: abandon, cancel, drain (:func:`~sim.compiled.kernel.finish`)."""
        self._begin_call()
        self.kn.finish(self.ist, self.fst, self.kint, self.kflt, self.heap_code, self.heap_key,
                       self.out, self.consts, self.fconsts)
        self._flush(fold=False)

    def _begin_call(self) -> None:
        kn, ist, c, log = self.kn, self.ist, self.consts, self.log
        ist[kn.I_OUT_N] = ist[kn.I_MARK_N] = 0
        c[kn.C_BUF_ROWS] = len(log.buf) // ROW.size
        c[kn.C_ROW0] = len(log)

    def _flush(self, fold: bool) -> None:
        """Pack the call's rows into the log, apply its marks, fold where the Python engine
        would (the call ended at a step's end), raise the engine's error if it stopped on one."""
        kn, ist, log = self.kn, self.ist, self.log
        n = int(ist[kn.I_OUT_N])
        if n:
            log.buf += memoryview(self.out[:n].view(np.uint8))  # the records' bytes
        for row in self.marks[:int(ist[kn.I_MARK_N])].tolist():
            log.mark_prefetch_used(row, self.expert_bytes)
        self._raise()
        if fold and log.folds and len(log.buf) > log.fold_rows * ROW.size:
            log.fold()

    def _raise(self) -> None:
        kn, ist = self.kn, self.ist
        err, key = int(ist[kn.I_ERR]), int(ist[kn.I_ERRKEY])
        name = self.engine.policy.name
        if err == kn.ERR_NONE:
            return
        if err == kn.ERR_BAD_KEY:
            raise PolicyViolation(f"{name}: prefetch key {key!r} is not a valid key")
        if err == kn.ERR_TWICE:
            raise PolicyViolation(f"{name}: prefetch of key {key}, which is planned twice")
        raise RuntimeError(f"compiled engine: internal error {err} at key {key}")

    # ---- the Python objects after the run --------------------------------------------------------
    def restore(self) -> None:
        """Leave the cache, the policy's LRU order and wanted keys, the protocol's counters and
        the link as the Python engine leaves them (see the module docstring)."""
        kn, ist, kint, engine = self.kn, self.ist, self.kint, self.engine
        order = self._walk(kn.I_HEAD, kn.K_NEXT)
        cache = engine.cache
        cache.clear()
        for key in sorted(order):
            cache.insert(key)
        policy = engine.policy
        policy.replacement._order = OrderedDict.fromkeys(order)
        wanted = self.wanted[:int(ist[kn.I_NWANTED])].tolist()
        policy.planner.wanted.clear()
        policy.planner.wanted.update(wanted)
        protocol = engine.protocol
        for name, index in (("n_miss", kn.I_N_MISS), ("n_inflight", kn.I_N_INFLIGHT),
                            ("n_demand", kn.I_N_DEMAND), ("n_stream", kn.I_N_STREAM),
                            ("n_prefetch", kn.I_N_PREFETCH), ("n_prefetch_used", kn.I_N_USED),
                            ("n_evicted", kn.I_N_EVICTED)):
            setattr(protocol, name, int(ist[index]))
        protocol.unused = dict.fromkeys(np.flatnonzero(kint[:, kn.K_UNUSED]).tolist())
        if engine.host is not None:
            engine.host._dram = OrderedDict.fromkeys(self._walk(kn.I_DHEAD, kn.K_DNEXT))
            engine.host.nvme_reads = int(ist[kn.I_NVME_READS])
        link = engine.link
        link.events = int(ist[kn.I_EVENTS])
        link.env.now = float(self.fst[kn.F_NOW])
        link._seq = int(ist[kn.I_SEQ])
        link._last_end = float(self.fst[kn.F_LAST_END])


def run_compiled(engine: Engine, plan: CompiledPlan) -> None:
    """Run ``engine``'s schedule on the kernel (in place of ``Engine._main``); sets
    ``engine.end_s``."""
    from moe_offload_lab.sim.engine import _attended, _attended_by_step

    run = _Run(engine, plan)
    trace, compute = engine.trace, engine.compute
    # one integer type for the kernel's routing and lookahead arrays: one compiled
    # specialisation whatever the trace stores
    ids_all = trace.expert_ids.astype(_IDS, copy=False)  # [T, L, k]
    la_all = trace.lookahead[1].astype(_IDS, copy=False) if plan.gate else None  # [T, L, k]
    dummy = np.zeros((1, 1, 1), dtype=_IDS)  # [1, 1, 1]: no lookahead read
    if engine.batcher is None:
        schedule = engine.schedule
        if schedule:
            sizes = [len(r) for r in schedule]
            bounds = np.cumsum([0] + sizes).astype(np.int64)  # [S + 1]
            rows_all = np.concatenate(schedule)  # [R]
            ids = ids_all[rows_all]  # [R, L, k]
            la = la_all[rows_all] if la_all is not None else dummy  # [R, L, k]
            request_rows = trace.request_id[rows_all]  # [R]
            context_steps, kv_steps = _attended_by_step(trace.position[rows_all], request_rows,
                                                        bounds.tolist())  # [S] each
            other = np.asarray(compute.layer_other_steps(np.diff(bounds), context_steps,
                                                         kv_steps), dtype=np.float64)  # [S]
            decision = np.array([run.decision_s(n) for n in sizes], dtype=np.float64)  # [S]
            run.prepare(max(sizes))
            run.call(ids, la, bounds, np.arange(len(sizes), dtype=np.int64), other, decision)
    else:
        kn, fst = run.kn, run.fst
        step = -1
        while True:
            clock = float(fst[kn.F_CLOCK])
            rows = engine._next_rows(clock)
            if rows is None:
                break
            step += 1
            fst[kn.F_CLOCK] = max(clock, engine._idle_until)
            n_tok = len(rows)
            request_ids = trace.request_id[rows]  # [B]
            other = compute.layer_other_s(n_tok, *_attended(trace.position[rows], request_ids))
            run.prepare(n_tok)
            run.call(ids_all[rows], la_all[rows] if la_all is not None else dummy,
                     np.array([0, n_tok], dtype=np.int64), np.array([step], dtype=np.int64),
                     np.array([other]), np.array([run.decision_s(n_tok)]))
    engine.end_s = float(run.fst[run.kn.F_CLOCK])
    run.finish()
    run.restore()
