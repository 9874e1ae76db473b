"""The balance-policy contract between the cluster engine and a placement/balancing policy.

Every MoE layer has a **placement**: a table ``[ranks, S]`` of expert ids (``-1`` = empty slot)
with ``S = base + R`` slots per rank, ``base = ceil(E / ranks)`` for the experts a rank hosts and
``R`` redundant slots (``BalanceSetup.redundant_slots``). Every expert sits in at least one slot.
A policy returns a :class:`Plan` (the placement plus, optionally, the share of an expert's tokens
each slot takes); the engine moves the weights that changed, splits the real tokens by the plan
and charges the time.

How the redundant slots are held in memory is the policy's ``pool`` (the engine enforces and
counts it):

- ``"none"``: the policy never fills them (no memory);
- ``"resident"``: every layer keeps its own ``R`` slots (``R x layers`` experts per rank), as
  DeepSeek's EPLB deploys redundant experts; any slot of the placement may change;
- ``"double-buffer"``: the first ``base`` columns are the fixed home placement and the last ``R``
  columns of layer ``l`` live in bank ``l % 2`` of a pool of ``2 R`` expert buffers per rank: the
  replicas of layer ``l + 1`` are copied while layer ``l`` computes with the other bank (PROBE).

Call order (one run)::

    policy.reset(setup)                        # once, before anything else
    home = policy.home()                       # [experts] initial rank of every expert
    per step:
        policy.begin_step(batch)               # the step's tokens (StepBatch)
        per MoE layer l (planned when layer l-1's router has run; layer 0 at the step's start):
            plan = policy.plan(ctx)            # Plan or None (keep ctx.current)
            ... copies, dispatch (tokens split by the plan), experts, combine ...
            policy.observe(step, l, load)      # [experts] routed token-expert pairs of layer l

Policies also declare their decision time (:meth:`BalancePolicy.decision_s`): prediction and
planning run on their own stream and only delay a layer when they are not done by its dispatch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

POOLS = ("none", "resident", "double-buffer")


@dataclass(frozen=True)
class BalanceSetup:
    """What a policy may know about the cluster and model before the run.

    Cost figures come from the engine's hardware model: ``instance_s(tokens)`` seconds of one
    expert instance computing ``tokens`` (an array, 0 tokens cost 0); ``copy_s`` one replica copy
    inside a node; ``matmul_s(rows, k, n)`` a ``[rows, k] x [k, n]`` GEMM on one GPU;
    ``allreduce_s`` a small all-reduce over the ranks (e.g. summing predicted loads).
    """

    ranks: int
    ranks_per_node: int
    num_experts: int
    num_layers: int
    top_k: int
    redundant_slots: int
    expert_bytes: int
    hidden_size: int = 0
    num_groups: int = 1  # expert groups of group-limited routing (DeepSeek-V3: 8); 1 = none
    has_lookahead: tuple[int, ...] = ()  # lookahead distances the trace carries
    feature_dim: int = 0  # width of the trace's hidden-state features (0: none)
    instance_s: Callable[[np.ndarray], np.ndarray] | None = None
    matmul_s: Callable[[int, int, int], float] | None = None
    copy_s: float = 0.0
    allreduce_s: float = 0.0

    @property
    def base_slots(self) -> int:
        """Slots per rank for the experts it hosts: ``ceil(E / ranks)``."""
        return -(-self.num_experts // self.ranks)

    @property
    def slots(self) -> int:
        """Slots per rank in a placement: ``base_slots + redundant_slots``."""
        return self.base_slots + self.redundant_slots

    def node_of(self, rank: int) -> int:
        """The node of ``rank``."""
        return rank // self.ranks_per_node


class StepBatch:
    """The tokens of one step, as a policy may see them.

    ``lookahead_load[d]`` ``[layers, experts]`` counts, per target layer ``t``, the experts layer
    ``t``'s router picks from layer ``t - d``'s hidden state (the trace's gate lookahead; zero
    rows where ``t < d``). :meth:`lookahead_ids` and :meth:`features` give the per-token inputs
    of a learned predictor. A non-oracle policy may read, for layer ``t``, only inputs of source
    layers ``< t`` (what exists when layer ``t`` is planned).
    """

    def __init__(self, step: int, phase: int, num_tokens: int,
                 lookahead_load: dict[int, np.ndarray], trace: Any = None,
                 rows: np.ndarray | None = None) -> None:
        self.step = step
        self.phase = phase
        self.num_tokens = num_tokens
        self.lookahead_load = lookahead_load
        self._trace = trace
        self._rows = rows

    def lookahead_ids(self, distance: int) -> np.ndarray | None:
        """``[B, layers, k]`` experts layer ``l + distance`` picks from layer ``l``'s state."""
        if self._trace is None or distance not in self._trace.lookahead:
            return None
        return self._trace.lookahead[distance][self._rows]

    def features(self) -> np.ndarray | None:
        """``[B, layers, F]`` hidden-state features, or None."""
        if self._trace is None or self._trace.features is None:
            return None
        return self._trace.features[self._rows]


@dataclass
class BalanceContext:
    """The engine's view when it asks for the placement of one layer.

    ``true_load`` is the batch's real routing of ``layer`` (only oracle predictors may read it).
    ``current`` is the placement resident for ``layer`` now (for a double-buffered pool: the
    home columns plus whatever the layer's bank still holds). ``copy_budget[r]`` is how many
    expert copies the engine expects rank ``r``'s link to finish before the layer's experts
    start (the hiding window: the open link time left after queued copies, prediction and
    planning); a policy that copies more makes the layer wait.
    """

    step: int
    layer: int
    phase: int
    num_tokens: int
    true_load: np.ndarray  # [experts] int64
    current: np.ndarray  # [ranks, S] int64, -1 = empty slot
    window_s: float = float("inf")
    copy_budget: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class Plan:
    """A layer's placement ``slots`` ``[ranks, S]`` and the token share of each slot.

    ``share`` ``[ranks, S]``: the fraction of its expert's tokens each slot takes (the shares
    of one expert sum to 1; a slot may take 0, keeping its weights idle). ``None``: an even
    split over the expert's slots, as vLLM and SGLang dispatch to EPLB's replicas.
    """

    slots: np.ndarray
    share: np.ndarray | None = None


class BalancePolicy(ABC):
    """Decides the placement of experts and the content of redundant slots.

    Subclasses are registered in :data:`policies.balancing.registry.BALANCERS` with a nested
    ``Params`` dataclass. ``is_oracle`` marks policies that read the future (upper bounds);
    ``pool`` says how redundant slots are held (module docstring).
    """

    name: str = "?"
    is_oracle: bool = False
    pool: str = "none"

    @abstractmethod
    def reset(self, setup: BalanceSetup) -> None:
        """Called once before the run with the cluster's shape; the policy clears its state,
        checks that the run gives it what it needs (a ConfigError otherwise) and may size its
        statistics. It decides nothing yet."""

    @abstractmethod
    def home(self) -> np.ndarray:
        """Called once after :meth:`reset`; returns the initial rank of every expert ``[E]``.
        It is the placement before any plan (and the "before balancing" reference); for a
        ``double-buffer`` pool it never changes."""

    @abstractmethod
    def begin_step(self, batch: StepBatch) -> None:
        """Called at the start of every step before any :meth:`plan` of that step; the policy
        may prepare per-step inputs (predictions, a periodic rebalance) but returns nothing."""

    @abstractmethod
    def plan(self, ctx: BalanceContext) -> Plan | None:
        """Called once per MoE layer and step, when the previous layer's router has run (layer 0:
        at the step's start), before the layer's tokens are dispatched. Returns the layer's
        :class:`Plan` or ``None`` to keep ``ctx.current`` (even split). Slots whose expert
        changes are copied; the layer's experts on a rank wait for its copies (stall)."""

    @abstractmethod
    def observe(self, step: int, layer: int, load: np.ndarray) -> None:
        """Called after each MoE layer ran, with its real per-expert load ``[E]`` (routed
        token-expert pairs). The policy may update statistics; it decides nothing here."""

    def decision_s(self, tokens_per_rank: int) -> tuple[float, float]:
        """Seconds of (prediction, planning) per layer on the policy's own stream, for a rank
        holding ``tokens_per_rank`` tokens. Default: nothing to charge."""
        return 0.0, 0.0


def round_robin_home(num_experts: int, ranks: int) -> np.ndarray:
    """Expert ``e`` on rank ``e % ranks``: ``[E]`` int64."""
    return np.arange(num_experts, dtype=np.int64) % ranks


def home_slots(home: np.ndarray, ranks: int, width: int) -> np.ndarray:
    """The ``[ranks, width]`` table of each rank's home experts, ascending, ``-1`` padded."""
    table = np.full((ranks, width), -1, dtype=np.int64)
    order = np.argsort(home, kind="stable")
    counts = np.bincount(home, minlength=ranks)
    if counts.max(initial=0) > width:
        raise ValueError(f"a rank is home to {int(counts.max())} experts, more than {width} "
                         f"slots")
    column = np.arange(len(home)) - np.repeat(np.cumsum(counts) - counts, counts)
    table[home[order], column] = order
    return table


def check_placement(slots: np.ndarray, num_experts: int, ranks: int, width: int) -> None:
    """Raise ValueError unless ``slots`` is a valid ``[ranks, width]`` placement: ids in range
    and every expert somewhere. (EPLB may put two replicas of an expert on one rank; the engine
    then runs them as one instance.)"""
    if slots.shape != (ranks, width):
        raise ValueError(f"placement must have shape ({ranks}, {width}), got {slots.shape}")
    if slots.max(initial=-1) >= num_experts or slots.min(initial=0) < -1:
        raise ValueError("placement holds an expert id out of range")
    present = np.bincount(slots[slots >= 0], minlength=num_experts) > 0  # [E]
    if not present.all():
        missing = np.flatnonzero(~present)[:5].tolist()
        raise ValueError(f"placement leaves expert(s) {missing} nowhere")
