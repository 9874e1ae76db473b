"""The SimPy model of one expert-parallel run: per step, per MoE layer, all ranks in lockstep.

One MoE layer on the cluster::

    attention and router (data-parallel: each rank its share of the batch's tokens)
    -> dispatch all-to-all -> per-rank expert compute (a rank starts once its replicas for the
    layer have landed) -> combine all-to-all; the layer ends when the slowest rank is done.

Three more streams run beside the compute, each charged where it is:

- **decision** (prediction and planning): when layer ``l``'s router has run (layer 0: at the
  step's start) the policy plans layer ``l + 1``; that takes ``BalancePolicy.decision_s`` on
  the decision stream, and layer ``l + 1``'s dispatch waits if the plan is not ready
  (``plan_wait_s``, the exposed part);
- **copies** (:class:`~sim.cluster.transfers.ReplicaLinks`): the plan's new replicas are copied
  onto their ranks from the moment the plan is ready, on links that yield to the all-to-all; a
  rank whose copies for a layer are late starts that layer's experts late (``stall_s``);
- the engine tells the policy how many copies fit in the window (``copy_budget``): the open
  link time between the plan being ready and the layer's experts starting (layer ``l``'s expert
  time plus layer ``l + 1``'s attention), less what each link still owes.

Memory: the policy's ``pool`` decides how redundant slots are held (``policies.balancing.base``);
for a double-buffered pool the engine keeps each rank's two banks and copies a layer's replicas
into its bank unless the bank already holds them, never more than ``R`` per rank and layer.
Events are per layer; copies are bookkept, not processes.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import simpy
from moe_offload_lab.policies.balancing.base import (
    POOLS,
    BalanceContext,
    BalancePolicy,
    BalanceSetup,
    Plan,
    StepBatch,
    check_placement,
    home_slots,
)
from moe_offload_lab.policies.balancing.split import (
    imbalance,
    rank_expert_tokens,
    slot_fractions,
    split_tokens,
)
from moe_offload_lab.sim.cluster.alltoall import alltoall, traffic_pairs
from moe_offload_lab.sim.cluster.config import ClusterSpec
from moe_offload_lab.sim.cluster.loads import StepLoads, step_loads
from moe_offload_lab.sim.cluster.rank_compute import ExpertTimes
from moe_offload_lab.sim.cluster.transfers import ReplicaLinks
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

LAYER_COLUMNS = ("step", "layer", "phase", "tokens", "start_s", "end_s", "attn_s", "dispatch_s",
                 "expert_max_s", "expert_mean_s", "combine_s", "stall_s", "imbalance_before",
                 "imbalance_after", "max_rank_pairs", "routed_pairs", "computed_pairs",
                 "replica_copies", "a2a_bytes", "a2a_inter_bytes", "plan_wait_s", "decision_s",
                 "replicas")


class ClusterEngine:
    """Runs a schedule of trace rows through the cluster model with one balance policy."""

    def __init__(self, cluster: ClusterSpec, trace: Trace, policy: BalancePolicy,
                 compute: ComputeModel, schedule: Sequence[np.ndarray],
                 timeline_steps: set[int] | None = None, spec: ModelSpec | None = None) -> None:
        self.cluster = cluster
        self.trace = trace
        self.spec = spec or trace.spec
        self.policy = policy
        self.compute = compute
        self.schedule = schedule
        self.timeline_steps = timeline_steps if timeline_steps is not None else set()
        self.expert_times = ExpertTimes(compute)
        self.layers: list[tuple[float, ...]] = []
        self.rank_events: list[tuple[int, str, float, float, int, int]] = []  # timeline rows
        if policy.pool not in POOLS:
            raise ValueError(f"balance policy {policy.name!r}: pool must be one of {POOLS}")

    # ---- set-up ---------------------------------------------------------------------------------
    def _setup(self) -> BalanceSetup:
        cluster, spec = self.cluster, self.spec
        features = self.trace.features
        return BalanceSetup(
            ranks=cluster.ranks, ranks_per_node=cluster.ranks_per_node,
            num_experts=spec.num_experts, num_layers=spec.num_moe_layers, top_k=spec.top_k,
            redundant_slots=cluster.redundant_slots, expert_bytes=spec.expert_bytes,
            hidden_size=spec.hidden_size, num_groups=int(spec.extra.get("n_group", 1) or 1),
            has_lookahead=tuple(sorted(self.trace.lookahead)),
            feature_dim=0 if features is None else int(features.shape[2]),
            instance_s=self.expert_times.of, matmul_s=self._matmul_s,
            copy_s=cluster.nvlink_latency_s + spec.expert_bytes / (cluster.nvlink_gb_per_s * 1e9),
            allreduce_s=2 * cluster.nvlink_latency_s)

    def _matmul_s(self, rows: int, k: int, n: int) -> float:
        """Roofline of a ``[rows, k] x [k, n]`` bf16 GEMM on one GPU (one kernel)."""
        hw = self.compute.hardware
        flops = 2.0 * rows * k * n
        moved = 2.0 * (rows * k + k * n + rows * n)
        return max(flops / hw.gpu_flops_per_s, moved / hw.hbm_bytes_per_s) + hw.kernel_launch_s

    def run(self) -> None:
        """Simulate every step of the schedule."""
        cluster, spec, policy = self.cluster, self.spec, self.policy
        self.setup = self._setup()
        policy.reset(self.setup)
        home = np.asarray(policy.home(), dtype=np.int64)
        if home.shape != (spec.num_experts,) or home.min() < 0 or home.max() >= cluster.ranks:
            raise ValueError(f"balance policy {policy.name!r}: home() must give a rank in "
                             f"[0, {cluster.ranks}) for each of {spec.num_experts} experts")
        self.home = home
        layers, width = spec.num_moe_layers, self.setup.slots
        self.home_table = home_slots(home, cluster.ranks, self.setup.base_slots)
        start = np.concatenate([self.home_table, np.full((cluster.ranks, cluster.redundant_slots),
                                                         -1, dtype=np.int64)], axis=1)
        self.slots = np.repeat(start[None], layers, axis=0)  # [layers, ranks, S]
        self.frac = np.repeat(slot_fractions(start, spec.num_experts)[None], layers, axis=0)
        self.replicated = np.zeros(layers, dtype=bool)  # a layer holds an expert twice
        self.width = width
        # double-buffered pool: bank b of rank r holds layer bank_layer[b]'s replicas
        self.bank_layer = [-1, -1]
        self.bank = np.full((2, cluster.ranks, cluster.redundant_slots), -1, dtype=np.int64)
        self.links = ReplicaLinks(cluster, spec.expert_bytes)
        self._earlier: dict[int, np.ndarray] = {}  # width -> [W, W] strictly-lower mask
        self._no_replicas = np.full((cluster.ranks, cluster.redundant_slots), -1, dtype=np.int64)
        self.plan_ready = np.zeros(layers)
        self.decision_free = 0.0
        self.issued: dict[tuple[int, int], int] = {}  # (step, layer) -> copies started
        self.decided: dict[tuple[int, int], float] = {}  # (step, layer) -> decision seconds
        self.env = simpy.Environment()
        self.env.process(self._main())
        self.env.run()

    # ---- the step loop ---------------------------------------------------------------------------
    def _main(self) -> Generator[simpy.Event, Any, None]:
        env, cluster, spec = self.env, self.cluster, self.spec
        ranks = cluster.ranks
        bytes_per_pair = spec.hidden_size * cluster.activation_bytes
        n_layers = spec.num_moe_layers
        for step, rows in enumerate(self.schedule):
            loads = step_loads(self.trace, rows, ranks)
            phase = int(self.trace.phase[rows[0]]) if len(rows) else 1
            self.policy.begin_step(StepBatch(step, phase, loads.num_tokens, loads.lookahead,
                                             self.trace, rows))
            record = step in self.timeline_steps
            attn_s = self.compute.layer_other_s(-(-loads.num_tokens // ranks))
            self.decision = self.policy.decision_s(-(-loads.num_tokens // ranks))
            self._plan(step, 0, phase, loads, window_s=attn_s)
            for layer in range(n_layers):
                start = env.now
                yield env.timeout(attn_s)
                load = loads.load[layer]  # [E]
                inst = self._split(layer, load)  # [ranks, E]
                rank_s = self.expert_times.per_rank_s(inst)  # [ranks]
                if layer + 1 < n_layers:
                    self._plan(step, layer + 1, phase, loads,
                               window_s=float(rank_s.max()) + attn_s)
                wait = max(self.plan_ready[layer] - env.now, 0.0)
                if wait > 0:
                    yield env.timeout(wait)
                pairs = traffic_pairs(loads.by_src[:, layer], inst, load)  # [src, dst]
                a2a = alltoall(pairs, cluster, bytes_per_pair)
                self.links.close(env.now, env.now + a2a.time_s)
                yield env.timeout(a2a.time_s)
                expert_start = env.now
                ready = self.links.ready_s(layer, expert_start)  # [ranks]
                begin = np.maximum(expert_start, ready)  # [ranks]
                finish = begin + rank_s
                expert_end = float(finish.max())
                stall = expert_end - (expert_start + float(rank_s.max()))
                if expert_end > env.now:
                    yield env.timeout(expert_end - env.now)
                self.links.close(env.now, env.now + a2a.time_s)
                yield env.timeout(a2a.time_s)
                self.policy.observe(step, layer, load)
                rank_pairs = inst.sum(axis=1)  # [ranks]
                before = np.bincount(self.home, weights=load, minlength=ranks)  # [ranks]
                copies = self.issued.pop((step, layer), 0)
                self.layers.append((
                    step, layer, phase, loads.num_tokens, start, env.now, attn_s, a2a.time_s,
                    float(rank_s.max()), float(rank_s.mean()), a2a.time_s, max(stall, 0.0),
                    imbalance(before), imbalance(rank_pairs), float(rank_pairs.max()),
                    float(load.sum()), float(inst.sum()), copies, a2a.bytes_total,
                    a2a.bytes_inter, wait, self.decided.pop((step, layer), 0.0),
                    int((self.slots[layer][:, self.setup.base_slots:] >= 0).sum())))
                if record:
                    self._record(step, layer, start, attn_s, wait, a2a.time_s, begin, finish,
                                 expert_end)

    def _split(self, layer: int, load: np.ndarray) -> np.ndarray:
        """Tokens each rank computes for each expert of ``layer``: ``[ranks, E]``."""
        if not self.replicated[layer]:  # every expert in one slot: all tokens there
            inst = np.zeros((self.cluster.ranks, self.spec.num_experts), dtype=np.int64)
            slots = self.slots[layer]
            valid = slots >= 0
            rank_of = np.broadcast_to(np.arange(self.cluster.ranks)[:, None], slots.shape)
            inst[rank_of[valid], slots[valid]] = load[slots[valid]]
            return inst
        slots = self.slots[layer]
        tokens = split_tokens(load, slots, self.frac[layer])  # [ranks, S]
        return rank_expert_tokens(tokens, slots, self.spec.num_experts)

    # ---- balancing ------------------------------------------------------------------------------
    def _current(self, layer: int) -> np.ndarray:
        """What is resident for ``layer`` now: ``[ranks, S]``."""
        if self.policy.pool != "double-buffer":
            return self.slots[layer].copy()
        bank = layer % 2
        extra = self.bank[bank] if self.bank_layer[bank] == layer else self._no_replicas
        return np.concatenate([self.home_table, extra], axis=1)

    def _plan(self, step: int, layer: int, phase: int, loads: StepLoads, window_s: float) -> None:
        """Ask the policy for ``layer``'s placement (see the module docstring)."""
        cluster, now = self.cluster, self.env.now
        predict_s, plan_s = self.decision
        begin = max(now, self.decision_free)
        ready = begin + predict_s + plan_s
        self.decision_free = ready
        self.plan_ready[layer] = ready
        self.decided[(step, layer)] = predict_s + plan_s
        open_s = window_s - (ready - now)  # link time left between plan and experts
        budget = np.zeros(cluster.ranks, dtype=np.int64)
        if self.policy.pool != "none":
            room = (open_s - self.links.backlog_s(now)) / max(self.setup.copy_s, 1e-12)
            budget = np.clip(np.floor(room), 0, cluster.redundant_slots).astype(np.int64)
        current = self._current(layer)
        ctx = BalanceContext(step=step, layer=layer, phase=phase, num_tokens=loads.num_tokens,
                             true_load=loads.load[layer], current=current,
                             window_s=max(open_s, 0.0), copy_budget=budget)
        plan = self.policy.plan(ctx)
        if plan is not None:
            self._apply(step, layer, plan, current, ready)
        elif self.policy.pool == "double-buffer" and not np.array_equal(current,
                                                                          self.slots[layer]):
            self._install(layer, current, slot_fractions(current, self.spec.num_experts))

    def _apply(self, step: int, layer: int, plan: Plan, current: np.ndarray,
               issued_s: float) -> None:
        """Check the plan, enforce the pool, start the copies it needs, install it."""
        cluster, spec, name = self.cluster, self.spec, self.policy.name
        slots = np.asarray(plan.slots, dtype=np.int64)
        base = self.setup.base_slots
        pool = self.policy.pool
        if pool != "resident" and (slots.shape != (cluster.ranks, self.width) or
                                   not np.array_equal(slots[:, :base], self.home_table)):
            raise ValueError(f"balance policy {name!r}, layer {layer}: a {pool!r} pool keeps "
                             f"the home placement; only the last R columns may change "
                             f"(placement must have shape {(cluster.ranks, self.width)})")
        try:
            if pool == "resident":  # the home columns, which hold every expert, may change
                check_placement(slots, spec.num_experts, cluster.ranks, self.width)
            elif slots.max() >= spec.num_experts or slots.min() < -1:
                raise ValueError("placement holds an expert id out of range")
            frac = slot_fractions(slots, spec.num_experts, plan.share)
        except ValueError as exc:
            raise ValueError(f"balance policy {name!r}, layer {layer}: {exc}") from None
        if pool == "none" and (slots[:, base:] >= 0).any():
            raise ValueError(f"balance policy {name!r} declares no redundant memory "
                             f"(pool 'none') but filled a redundant slot")
        self.links.forget(layer)
        want, have = (slots, current) if pool == "resident" else \
            (slots[:, base:], current[:, base:])
        need = (want >= 0) & ~(want[:, :, None] == have[:, None, :]).any(axis=2)  # [ranks, W]
        width = want.shape[1]
        if width > 1:  # an expert twice in a row is copied once
            earlier = self._earlier.get(width)
            if earlier is None:  # [W, W]: j < i
                earlier = self._earlier[width] = np.tril(np.ones((width, width), bool), -1)
            need &= ~((want[:, :, None] == want[:, None, :]) & earlier).any(axis=2)
        ranks_to, cols = np.nonzero(need)
        experts = want[ranks_to, cols]
        if cluster.nodes == 1:
            sources = self.home[experts].tolist()
        else:
            sources = [self._source(layer, e, r)
                       for r, e in zip(ranks_to.tolist(), experts.tolist(), strict=True)]
        for r, e, src in zip(ranks_to.tolist(), experts.tolist(), sources, strict=True):
            self.links.copy(step, layer, e, src, r, issued_s)
        new = len(ranks_to)
        if pool == "double-buffer":
            bank = layer % 2
            self.bank[bank] = slots[:, base:]
            self.bank_layer[bank] = layer
        self.issued[(step, layer)] = self.issued.get((step, layer), 0) + new
        self._install(layer, slots, frac)

    def _install(self, layer: int, slots: np.ndarray, frac: np.ndarray) -> None:
        self.slots[layer] = slots
        self.frac[layer] = frac
        copies = np.bincount(slots[slots >= 0], minlength=self.spec.num_experts)  # [E]
        self.replicated[layer] = bool(copies.max() > 1)

    def _source(self, layer: int, expert: int, dst: int) -> int:
        """Where a copy of ``expert`` for ``dst`` comes from: a rank of ``dst``'s node that
        holds it in the layer's placement (its home rank first), else its home rank."""
        home = int(self.home[expert])
        if self.cluster.nodes == 1:
            return home
        node = self.cluster.node_of(dst)
        if self.cluster.node_of(home) == node:
            return home
        holders = np.flatnonzero((self.slots[layer] == expert).any(axis=1)).tolist()
        same = [r for r in holders if self.cluster.node_of(r) == node and r != dst]
        return same[0] if same else home

    # ---- timeline -------------------------------------------------------------------------------
    def _record(self, step: int, layer: int, start: float, attn_s: float, wait_s: float,
                a2a_s: float, begin: np.ndarray, finish: np.ndarray, expert_end: float) -> None:
        dispatch = start + attn_s + wait_s
        for r in range(self.cluster.ranks):
            events = self.rank_events
            events.append((r, "attention", start, start + attn_s, step, layer))
            if wait_s > 0:
                events.append((r, "plan wait", start + attn_s, dispatch, step, layer))
            events.append((r, "dispatch", dispatch, dispatch + a2a_s, step, layer))
            if begin[r] > dispatch + a2a_s + 1e-12:
                events.append((r, "stall", dispatch + a2a_s, float(begin[r]), step, layer))
            events.append((r, "experts", float(begin[r]), float(finish[r]), step, layer))
            events.append((r, "combine", expert_end, expert_end + a2a_s, step, layer))


def pool_experts(pool: str, redundant_slots: int, layers: int) -> int:
    """Redundant expert buffers a rank holds for a policy's ``pool``."""
    if pool == "resident":
        return redundant_slots * layers
    if pool == "double-buffer":
        return 2 * redundant_slots
    return 0

