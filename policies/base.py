"""The policy contract both engines call: :class:`Policy`, :class:`FetchPlan`, placement targets.

The engine owns time and memory; a policy only decides. Keys are ints ``layer * E + expert``
(:mod:`policies.keys`). Containers a policy returns (the plan, the victim list, the placement
mapping) are owned by the policy and REUSED: the engine must consume them before its next call
into the same policy, and copy them if it needs them longer.

Call order an engine must follow
================================

:class:`policies.protocol.LayerProtocol` implements it once; every engine (simulator, executor,
offline replay) drives that object and supplies only how time passes and where memory lives.

Once per run::

    policy.reset(spec, capacity_slots, cost_model, trace=None, schedule=None)
    # then size the cache: policy.partition_slots is None (one shared pool) or one quota per layer

Per step (one batch), with ``ctx`` the engine's single reused :class:`LayerContext`::

    ctx.begin_step(step, request_ids, phase, rows)
    policy.begin_step(ctx)
    for layer in range(L):
        ctx.set_layer(layer, experts, tokens_per_expert, keys, routing, gates, lookahead)
        policy.on_layer(ctx)                      # 1. routing of this layer is known (access)
        missing = [k for k in ctx.keys if k not in resident and k not in in_flight]
        if missing:
            where = policy.place(ctx, missing)    # 2. "gpu": fetch, "cpu": compute on the host,
                                                  #    "gpu-lowbits": fetch a low-precision copy
            fetch = [k for k in missing if where[k] == GPU]
            keep = [k for k in fetch if policy.admit(k, ctx)]   # 3. False: stream through a
                                                  #    scratch buffer, do not cache
            need = len(keep) - view.free_slots(layer)
            if need > 0:
                for v in policy.evict(view, need, layer):       # 4. victims
                    drop(v); policy.on_evict(v)
            start demand copies of keep (+ streamed ones)
        plan = policy.prefetch(ctx)               # 5. speculative copies, most urgent first
        for k in plan.cancel: abandon the copy if it is still queued or running; free its slot;
                              policy.on_evict(k)
        need = len(plan.keys) - view.free_slots()     # per partition (layer=k // E) when
        if need > 0:                                  # partitioned, with layer=-1 otherwise
            for v in policy.evict(view, need, -1): drop(v); policy.on_evict(v)
        start copies of plan.keys in order while slots are free (the rest of the plan is dropped)
        run the layer (wait for in-flight keys it needs)
    policy.end_step(ctx)

Whenever a copy completes (demand or prefetch), at its completion time:
``policy.on_fetch_done(key)``. Whenever a key leaves its slot for any reason (evicted or
cancelled in flight), ``policy.on_evict(key)``; streamed (non-admitted) experts never held a
slot. Per MoE layer the engine may charge ``policy.decision_cost.seconds(num_tokens)`` on
``decision_cost.where``.

Low-precision copies (HOBBIT)
=============================

``place`` may answer :data:`LOWBITS` for a missing key: it is fetched like a :data:`GPU` key
(admitted, evicted for, copied on demand or streamed) but the copy is a low-precision version of
the expert, ``policy.lowbit_fraction`` of its bytes (read by engines after ``reset``; 1.0 for
policies that never answer LOWBITS). The copy occupies a whole slot like any other. While it
stays resident, every computation of that key runs from the low-precision weights; engines count
those computations (the accuracy cost) and the protocol keeps the set of such keys
(:attr:`policies.protocol.LayerProtocol.lowbit`). Prefetches are always full precision.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np
from moe_offload_lab.policies.cache import CacheView
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel, DecisionCost
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

GPU = "gpu"  # placement: fetch the expert and run it on the GPU
CPU = "cpu"  # placement: run the expert on the host CPU where its weights live
LOWBITS = "gpu-lowbits"  # placement: fetch a low-precision copy and run it on the GPU (HOBBIT)

Schedule = Sequence[np.ndarray]  # per step: the trace rows [B] the engine will run, in order


class FetchPlan:
    """The answer of :meth:`Policy.prefetch`, reused by the policy across calls.

    ``keys``: keys to copy ahead of need, highest priority first; none is resident or in flight
    when returned. ``cancel``: in-flight speculative copies to abandon (ProMoE-style early
    preemption once a layer's real routing shows them stale).
    """

    __slots__ = ("keys", "cancel")

    def __init__(self) -> None:
        self.keys: list[int] = []
        self.cancel: list[int] = []

    def clear(self) -> None:
        """Empty both lists in place."""
        self.keys.clear()
        self.cancel.clear()

    def __repr__(self) -> str:
        return f"FetchPlan(keys={self.keys}, cancel={self.cancel})"


class Policy(ABC):
    """One expert-offloading policy, called by the simulator and the executor alike.

    Subclasses set ``name``; ``is_oracle`` is True for upper bounds that read the future (the
    trace or the schedule) and can never be deployed. Policies are deterministic given their seed
    and inputs.
    """

    name: str = "policy"
    is_oracle: bool = False
    #: Per-layer slot quotas the cache must enforce, or None for one shared pool. Valid after
    #: :meth:`reset`.
    partition_slots: list[int] | None = None
    #: The ``ctx.lookahead`` distances the policy reads, or None (the default) for every distance
    #: the trace carries. Read by engines after :meth:`reset`; they skip building the others.
    lookahead_distances: tuple[int, ...] | None = None
    #: Bytes of a low-precision copy over the expert's (placement :data:`LOWBITS`), in (0, 1].
    #: Read by engines after :meth:`reset`; 1.0 unless the policy's placement answers LOWBITS.
    lowbit_fraction: float = 1.0
    #: Implementation-profile fields (``sim.system.SystemProfile``) the policy's own runtime sets,
    #: e.g. ``{"staging_buffers": 2}`` for PreScope's double buffering; the simulator applies
    #: them over the run's profile, the executor ignores them. Empty for most policies.
    runtime: Mapping[str, object] = {}
    #: The :class:`~policies.replacement.tiers.TieredRule` that decides the host-DRAM tier
    #: (what DRAM keeps, what is promoted from NVMe), or None: engines keep DRAM in LRU order.
    #: Read by engines after :meth:`reset`, when the model does not fit host DRAM.
    tiered_rule: object | None = None
    #: True when :meth:`prefetch` on a *quiet* layer (every key of ``ctx.keys`` resident and no
    #: slot copy in flight) returns an empty plan and changes no state, so an engine may skip
    #: that call (:class:`~policies.protocol.LayerProtocol` does). Declared by the policy, so the
    #: skip stays exact; valid after :meth:`reset`. Default: False (always called).
    quiet_no_prefetch: bool = False
    #: True when :meth:`place` puts every missing key on the GPU and :meth:`admit` admits every
    #: key, both without side effects: engines may skip those calls (the protocol then fetches
    #: every missing key into a slot). Declared like :attr:`quiet_no_prefetch`.
    gpu_admit_all: bool = False

    @property
    @abstractmethod
    def decision_cost(self) -> DecisionCost:
        """Cost of one MoE layer's worth of calls, so engines can charge it.

        Read by the engine after :meth:`reset`; constant for the run.
        """

    @abstractmethod
    def reset(self, spec: ModelSpec, capacity_slots: int, cost_model: CostModel,
              trace: Trace | None = None, schedule: Schedule | None = None) -> None:
        """Forget all state and prepare for a run.

        Called once before the first step. ``capacity_slots`` is the number of expert slots of the
        GPU cache; ``cost_model`` the hardware figures the policy may plan with. ``trace`` and
        ``schedule`` (the trace rows of every step, known in advance for replayed workloads) are
        given when the engine replays a trace; oracle components need them and raise
        :class:`~traces.errors.ConfigError` when they are missing. May set
        :attr:`partition_slots`; raises ConfigError for a capacity it cannot work with.
        """

    @abstractmethod
    def begin_step(self, ctx: LayerContext) -> None:
        """A new step (batch) starts; ``ctx.step``, ``rows``, ``request_ids`` and ``phase`` are set.

        Called once per step before its first layer. Nothing to decide; per-step state
        (requests joining or leaving, the oracle's view of the step) is updated here.
        """

    @abstractmethod
    def on_layer(self, ctx: LayerContext) -> None:
        """The routing of ``ctx.layer`` is known: the batch accesses ``ctx.keys``.

        Called once per layer, first. Stateful rules learn here (recency, frequency, transition
        counts); nothing is decided and no cache state has changed yet.
        """

    @abstractmethod
    def place(self, ctx: LayerContext, missing: Sequence[int]) -> Mapping[int, str]:
        """Decide where each missing expert of the current layer runs.

        Called after :meth:`on_layer` when some of ``ctx.keys`` are neither resident nor in
        flight (``missing``, in ``ctx.keys`` order). Returns a mapping covering every missing key:
        :data:`GPU` (fetch it on demand), :data:`CPU` (compute it on the host, no copy) or
        :data:`LOWBITS` (fetch a low-precision copy of :attr:`lowbit_fraction` of its bytes,
        which then serves the key at low precision while it stays resident).
        """

    @abstractmethod
    def admit(self, key: int, ctx: LayerContext) -> bool:
        """Admission control for a demand fetch: may the fetched expert take a cache slot?

        Called for each missing key placed on the GPU, before eviction. False means the engine
        streams the expert through a scratch buffer for this layer only (no slot, no eviction).
        """

    @abstractmethod
    def evict(self, view: CacheView, need: int, layer: int = -1) -> Sequence[int]:
        """Choose up to ``need`` resident keys to drop.

        Called when a fetch needs slots the cache (or ``layer``'s partition, when partitioned;
        ``layer`` is the layer of the incoming key) does not have free. Must return resident keys
        only, never one in flight and never one the current layer needs; may return fewer than
        ``need`` when nothing else is evictable (the engine then streams or drops the fetch).
        """

    @abstractmethod
    def prefetch(self, ctx: LayerContext) -> FetchPlan:
        """Choose experts of later layers to copy ahead of need, and stale copies to cancel.

        Called once per layer, after the demand fetches of ``ctx.layer`` were issued. Keys may
        belong to any later layer, including early layers of the next step (wrap-around).
        """

    @abstractmethod
    def on_fetch_done(self, key: int) -> None:
        """The copy of ``key`` completed; it is resident from now on.

        Called at the copy's completion time, for demand fetches and prefetches alike (and for
        keys an engine preloads before the first step). Nothing to decide.
        """

    @abstractmethod
    def on_evict(self, key: int) -> None:
        """``key`` left its slot (evicted, or cancelled while in flight).

        Called once per removal. Nothing to decide; rules must tolerate keys they never saw.
        """

    def end_step(self, ctx: LayerContext) -> None:  # noqa: B027 - optional hook
        """The step's last layer has run. Optional; the default does nothing."""

    def needs_trace_extras(self, spec: ModelSpec) -> bool:
        """Whether the policy reads a replayed trace's lookahead or feature columns on a model of
        ``spec`` (known before :meth:`reset`). False lets a command load the routing columns
        only (less memory, faster); the default, True, always loads them."""
        return True

    def needs_lookahead(self, spec: ModelSpec) -> tuple[int, ...]:
        """The trace's lookahead distances this policy predicts from on a model of ``spec``,
        known before :meth:`reset`. Called by commands before a run, so a trace without them
        (an import, a recording without ``--lookahead``) is refused instead of silently
        predicting nothing. The default: none."""
        return ()


def check_lookahead(policy: Policy, spec: ModelSpec, available: Sequence[int], where: str
                    ) -> None:
    """Raise ConfigError when ``policy`` reads lookahead distances that ``where`` (a trace with
    lookahead columns ``available``) lacks: those predictions would all be empty."""
    from moe_offload_lab.traces.errors import ConfigError

    needed = policy.needs_lookahead(spec)
    missing = [d for d in needed if d not in set(available)]
    if not missing:
        return
    have = f"distances {', '.join(map(str, available))}" if len(available) else "no lookahead"
    fix = (f"lower policy.horizon to {max(available)}" if len(available)
           else "record or synthesise the trace with --lookahead "
                f"{max(needed)}, or choose a policy that predicts from history")
    raise ConfigError(f"policy {policy.name!r} predicts from lookahead distances "
                      f"{', '.join(map(str, needed))}, but {where} has {have} (it would "
                      f"predict nothing at {', '.join(map(str, missing))}); {fix}")


class PlacementError(ValueError):
    """A policy's :meth:`Policy.place` returned something other than "gpu", "cpu" or
    "gpu-lowbits" for a key."""


def split_placement(policy: Policy, ctx: LayerContext, missing: Sequence[int]
                    ) -> tuple[list[int], list[int], list[int]]:
    """Ask ``policy.place`` and split ``missing`` into (fetch to the GPU, compute on the CPU,
    the fetched keys whose copy is low precision: a subset of the first list, usually empty).

    Both engines call this, so a placement that names no target fails the same way in each.
    """
    where = policy.place(ctx, missing)
    gpu: list[int] = []
    cpu: list[int] = []
    low: list[int] = []
    for key in missing:
        target = where.get(key)
        if target == GPU:
            gpu.append(key)
        elif target == CPU:
            cpu.append(key)
        elif target == LOWBITS:
            gpu.append(key)
            low.append(key)
        else:
            raise PlacementError(f"{policy.name}: place() gave {target!r} for key {key}; "
                                 f"expected 'gpu', 'cpu' or 'gpu-lowbits'")
    return gpu, cpu, low
