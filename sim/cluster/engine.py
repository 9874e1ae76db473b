"""The SimPy model of one expert-parallel run: per step, per MoE layer, all ranks in lockstep.

One MoE layer on the cluster::

    attention and router (data-parallel: each rank its share of the batch's tokens)
    -> dispatch all-to-all -> per-rank expert compute (a rank starts once its replicas for the
    layer have arrived) -> combine all-to-all; the layer ends when the slowest rank is done.

The balance policy plans layer ``l + 1``'s replicas as soon as layer ``l``'s router has run (layer
0 at the start of the step); their copies run on the per-rank ingress links
(:class:`~sim.cluster.transfers.ReplicaLinks`) while layer ``l`` computes. A copy still running
when layer ``l + 1``'s experts should start delays its rank: that delay of the layer is the
stall. Events are per layer and per copy, never per token.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import simpy
from moe_offload_lab.policies.balancing.base import (
    BalanceContext,
    BalancePolicy,
    BalanceSetup,
    check_replicas,
)
from moe_offload_lab.policies.balancing.split import imbalance, split_tokens
from moe_offload_lab.sim.cluster.alltoall import alltoall, traffic_pairs
from moe_offload_lab.sim.cluster.config import ClusterSpec
from moe_offload_lab.sim.cluster.loads import step_loads
from moe_offload_lab.sim.cluster.rank_compute import ExpertTimes
from moe_offload_lab.sim.cluster.transfers import ReplicaLinks
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.traces.format import Trace

LAYER_COLUMNS = ("step", "layer", "phase", "tokens", "start_s", "end_s", "attn_s", "dispatch_s",
                 "expert_max_s", "expert_mean_s", "combine_s", "stall_s", "imbalance_before",
                 "imbalance_after", "max_rank_pairs", "routed_pairs", "computed_pairs",
                 "replica_copies", "a2a_bytes", "a2a_inter_bytes")


class ClusterEngine:
    """Runs a schedule of trace rows through the cluster model with one balance policy."""

    def __init__(self, cluster: ClusterSpec, trace: Trace, policy: BalancePolicy,
                 compute: ComputeModel, schedule: Sequence[np.ndarray],
                 timeline_steps: set[int] | None = None) -> None:
        self.cluster = cluster
        self.trace = trace
        self.spec = trace.spec
        self.policy = policy
        self.compute = compute
        self.schedule = schedule
        self.timeline_steps = timeline_steps if timeline_steps is not None else set()
        self.expert_times = ExpertTimes(compute)
        self.layers: list[tuple[float, ...]] = []
        self.rank_events: list[tuple[int, str, float, float, int, int]] = []  # timeline rows
        self.step_phase: list[int] = []

    # ---- running --------------------------------------------------------------------------------
    def run(self) -> None:
        """Simulate every step of the schedule."""
        cluster, spec = self.cluster, self.spec
        self.setup = BalanceSetup(
            ranks=cluster.ranks, ranks_per_node=cluster.ranks_per_node,
            num_experts=spec.num_experts, num_layers=spec.num_moe_layers, top_k=spec.top_k,
            redundant_slots=cluster.redundant_slots, expert_bytes=spec.expert_bytes,
            has_lookahead=tuple(sorted(self.trace.lookahead)),
            expert_time_s=self.expert_times.per_rank_s,
            attention_s=lambda tokens: self.compute.layer_other_s(-(-tokens // cluster.ranks)),
            copy_s=cluster.nvlink_latency_s
            + spec.expert_bytes / (cluster.nvlink_gb_per_s * 1e9))
        self.policy.reset(self.setup)
        home = np.asarray(self.policy.home(), dtype=np.int64)
        if home.shape != (spec.num_experts,) or home.min() < 0 or home.max() >= cluster.ranks:
            raise ValueError(f"balance policy {self.policy.name!r}: home() must give a rank in "
                             f"[0, {cluster.ranks}) for each of {spec.num_experts} experts")
        self.home = home
        self.env = simpy.Environment()
        self.links = ReplicaLinks(self.env, cluster, spec.expert_bytes)
        layers, slots = spec.num_moe_layers, cluster.redundant_slots
        self.replicas = np.full((layers, cluster.ranks, slots), -1, dtype=np.int64)
        self.arrival: list[dict[tuple[int, int], simpy.Event]] = [{} for _ in range(layers)]
        self.issued: dict[tuple[int, int], int] = {}  # (step, layer) -> copies started
        self.env.process(self._main())
        self.env.run()

    def _main(self) -> Generator[simpy.Event, Any, None]:
        env, cluster, spec = self.env, self.cluster, self.spec
        ranks = cluster.ranks
        bytes_per_pair = spec.hidden_size * cluster.activation_bytes
        for step, rows in enumerate(self.schedule):
            loads = step_loads(self.trace, rows, ranks)
            phase = int(self.trace.phase[rows[0]]) if len(rows) else 1
            self.step_phase.append(phase)
            self.policy.begin_step(step, phase, loads.num_tokens)
            record = step in self.timeline_steps
            attn_s = self.compute.layer_other_s(-(-loads.num_tokens // ranks))
            self._plan(step, 0, phase, loads)
            for layer in range(spec.num_moe_layers):
                start = env.now
                yield env.timeout(attn_s)
                if layer + 1 < spec.num_moe_layers:
                    self._plan(step, layer + 1, phase, loads)
                load = loads.load[layer]  # [E]
                inst = split_tokens(load, self.home, self.replicas[layer])  # [ranks, E]
                pairs = traffic_pairs(loads.by_src[:, layer], inst, load)  # [src, dst]
                a2a = alltoall(pairs, cluster, bytes_per_pair)
                yield env.timeout(a2a.time_s)
                expert_start = env.now
                ready = self._ready_times(layer)  # [ranks]
                pending = [ev for ev in self.arrival[layer].values() if not ev.processed]
                if pending:
                    yield env.all_of(pending)
                    ready = self._ready_times(layer)
                rank_s = self.expert_times.per_rank_s(inst)  # [ranks]
                begin = np.maximum(expert_start, ready)  # [ranks]
                finish = begin + rank_s
                expert_end = float(finish.max())
                stall = expert_end - (expert_start + float(rank_s.max()))
                if expert_end > env.now:
                    yield env.timeout(expert_end - env.now)
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
                    a2a.bytes_inter))
                if record:
                    self._record(step, layer, start, attn_s, a2a.time_s, begin, finish,
                                 expert_end)

    # ---- balancing ------------------------------------------------------------------------------
    def _plan(self, step: int, layer: int, phase: int, loads: Any) -> None:
        """Ask the policy for ``layer``'s replicas and start the copies that are needed."""
        lookahead = {d: counts[layer] for d, counts in loads.lookahead.items()
                     if loads.lookahead_valid[d][layer]}
        ctx = BalanceContext(step=step, layer=layer, phase=phase, num_tokens=loads.num_tokens,
                             true_load=loads.load[layer], current=self.replicas[layer].copy(),
                             lookahead_load=lookahead)
        plan = self.policy.plan(ctx)
        if plan is None:
            return
        plan = np.asarray(plan, dtype=np.int64)
        try:
            check_replicas(plan, self.home, self.cluster.ranks, self.cluster.redundant_slots)
        except ValueError as exc:
            raise ValueError(f"balance policy {self.policy.name!r}, layer {layer}: "
                             f"{exc}") from None
        arrival = self.arrival[layer]
        wanted = {(r, int(e)) for r in range(self.cluster.ranks) for e in plan[r] if e >= 0}
        for key in list(arrival):
            if key not in wanted:
                del arrival[key]  # slot reused; a copy still running just finishes unused
        for r, e in sorted(wanted - set(arrival)):
            arrival[(r, e)] = self.links.copy(step, layer, e, self._source(layer, e, r), r)
            self.issued[(step, layer)] = self.issued.get((step, layer), 0) + 1
        self.replicas[layer] = plan

    def _source(self, layer: int, expert: int, dst: int) -> int:
        """Where a copy of ``expert`` for ``dst`` comes from: a rank of ``dst``'s node that
        already holds it (home or a landed replica), else its home rank."""
        home = int(self.home[expert])
        node = self.cluster.node_of(dst)
        if self.cluster.node_of(home) == node:
            return home
        for (r, e), event in self.arrival[layer].items():
            if e == expert and event.processed and self.cluster.node_of(r) == node:
                return r
        return home

    def _ready_times(self, layer: int) -> np.ndarray:
        """When each rank's replicas for ``layer`` arrived (copies still running are skipped;
        the caller waits for them first): ``[ranks]``."""
        ready = np.zeros(self.cluster.ranks)
        for (r, _), event in self.arrival[layer].items():
            if event.processed:
                ready[r] = max(ready[r], float(event.value))
        return ready

    # ---- timeline -------------------------------------------------------------------------------
    def _record(self, step: int, layer: int, start: float, attn_s: float, a2a_s: float,
                begin: np.ndarray, finish: np.ndarray, expert_end: float) -> None:
        for r in range(self.cluster.ranks):
            events = self.rank_events
            events.append((r, "attention", start, start + attn_s, step, layer))
            events.append((r, "dispatch", start + attn_s, start + attn_s + a2a_s, step, layer))
            if begin[r] > start + attn_s + a2a_s + 1e-12:
                events.append((r, "stall", start + attn_s + a2a_s, float(begin[r]), step, layer))
            events.append((r, "experts", float(begin[r]), float(finish[r]), step, layer))
            events.append((r, "combine", expert_end, expert_end + a2a_s, step, layer))
