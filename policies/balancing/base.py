"""The balance-policy contract between the cluster engine and a placement/balancing policy.

Call order (one run)::

    policy.reset(setup)                       # once, before anything else
    home = policy.home()                      # [experts] primary rank of every expert
    per step:
        policy.begin_step(step, phase, num_tokens)
        per MoE layer l (planned while layer l-1 still runs; layer 0 at the step's start):
            replicas = policy.plan(ctx)       # [ranks, R] expert ids or -1; None keeps the old
            ... the engine copies new replicas over NVLink, runs layer l ...
            policy.observe(step, l, load)     # [experts] routed token-expert pairs of layer l

The engine splits a replicated expert's tokens over its copies with
:func:`policies.balancing.split.split_tokens` (water-filling onto the least loaded copy), so a
replica on a light rank may take all of an expert's tokens: replication covers "moves" too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class BalanceSetup:
    """What a policy may know about the cluster and model before the run."""

    ranks: int
    ranks_per_node: int
    num_experts: int
    num_layers: int
    top_k: int
    redundant_slots: int
    expert_bytes: int
    has_lookahead: tuple[int, ...] = ()  # lookahead distances the trace carries
    # Engine-supplied cost figures for time-aware planning (None when an engine has none):
    # expert_time_s(inst [ranks, E] tokens) -> [ranks] seconds of expert compute;
    # attention_s(num_tokens) -> seconds of a layer's non-expert work; copy_s: one replica copy.
    expert_time_s: Callable[[np.ndarray], np.ndarray] | None = None
    attention_s: Callable[[int], float] | None = None
    copy_s: float = 0.0


@dataclass
class BalanceContext:
    """The engine's view at the moment it asks for the replicas of one layer.

    ``true_load`` is the batch's real routing of ``layer`` (only oracle predictors may read it);
    ``lookahead_load[d]`` counts the experts layer ``layer``'s router would pick according to the
    trace's gate lookahead taken at layer ``layer - d`` (present when the trace has it and
    ``layer - d >= 0``); ``current`` is the replica table resident for ``layer`` now.
    """

    step: int
    layer: int
    phase: int
    num_tokens: int
    true_load: np.ndarray  # [experts] int64
    current: np.ndarray  # [ranks, R] int64, -1 = empty slot
    lookahead_load: dict[int, np.ndarray] = field(default_factory=dict)  # d -> [experts]


class BalancePolicy(ABC):
    """Decides the primary placement of experts and the content of redundant slots.

    Subclasses are registered in :data:`policies.balancing.registry.BALANCERS` with a nested
    ``Params`` dataclass. ``is_oracle`` marks policies that read the future (upper bounds).
    """

    name: str = "?"
    is_oracle: bool = False

    @abstractmethod
    def reset(self, setup: BalanceSetup) -> None:
        """Called once before the run with the cluster's shape; the policy clears its state and
        may size its statistics. It decides nothing yet."""

    @abstractmethod
    def home(self) -> np.ndarray:
        """Called once after :meth:`reset`; returns the primary rank of every expert ``[E]``
        (the same for every layer). Primary copies never move; only redundant slots change."""

    @abstractmethod
    def begin_step(self, step: int, phase: int, num_tokens: int) -> None:
        """Called at the start of every step (``phase`` 0 prefill, 1 decode) before any
        :meth:`plan` of that step; the policy may decide per-step things (e.g. a periodic
        rebalance) but returns nothing."""

    @abstractmethod
    def plan(self, ctx: BalanceContext) -> np.ndarray | None:
        """Called once per MoE layer and step, while the previous layer computes, before the
        engine dispatches the layer's tokens. Returns the layer's redundant-slot table
        ``[ranks, R]`` (expert ids, -1 empty, no expert twice on one rank, never an expert on its
        own home rank) or ``None`` to keep ``ctx.current``. Slots whose expert changes are
        copied over NVLink and the layer waits for them (stall)."""

    @abstractmethod
    def observe(self, step: int, layer: int, load: np.ndarray) -> None:
        """Called after each MoE layer ran, with its real per-expert load ``[E]`` (routed
        token-expert pairs). The policy may update statistics; it decides nothing here."""


def round_robin_home(num_experts: int, ranks: int) -> np.ndarray:
    """Expert ``e`` on rank ``e % ranks``: ``[E]`` int64."""
    return np.arange(num_experts, dtype=np.int64) % ranks


def check_replicas(replicas: np.ndarray, home: np.ndarray, ranks: int, slots: int) -> None:
    """Raise ValueError unless ``replicas`` is a valid ``[ranks, slots]`` table for ``home``."""
    if replicas.shape != (ranks, slots):
        raise ValueError(f"replica table must have shape ({ranks}, {slots}), "
                         f"got {replicas.shape}")
    for r in range(ranks):
        row = replicas[r][replicas[r] >= 0]
        if len(set(row.tolist())) != len(row):
            raise ValueError(f"rank {r} holds an expert twice: {row.tolist()}")
        if np.any(row >= len(home)):
            raise ValueError(f"rank {r}: expert id out of range")
        if np.any(home[row] == r):
            raise ValueError(f"rank {r}: a replica of an expert homed on the same rank")
