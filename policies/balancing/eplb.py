"""EPLB-style balancing: periodic replication of the heaviest experts from a moving average.

Every ``period`` steps (the first time at step ``period``) the policy re-plans every layer's
redundant slots with :func:`~policies.balancing.planners.replicate_heaviest` over the moving
average of that layer's per-expert load (``decay`` per observation); between rebalances the
replicas stay put. It only sees the past, so shifting hot experts catch it out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moe_offload_lab.policies.balancing.base import (
    BalanceContext,
    BalancePolicy,
    BalanceSetup,
    round_robin_home,
)
from moe_offload_lab.policies.balancing.load_predictors import LoadHistory
from moe_offload_lab.policies.balancing.planners import greedy_replicate, replicate_heaviest
from moe_offload_lab.policies.balancing.registry import BALANCERS
from moe_offload_lab.policies.registry import require


@BALANCERS.register("eplb")
class EplbBalancer(BalancePolicy):
    """Periodic, history-driven replication (DeepSeek's EPLB in spirit)."""

    @dataclass(frozen=True)
    class Params:
        """``period`` steps between rebalances; ``decay`` of the load moving average;
        ``planner``: ``heaviest`` (EPLB's copy-the-heaviest) or ``greedy``."""

        period: int = 32
        decay: float = 0.9
        planner: str = "heaviest"

        def __post_init__(self) -> None:
            require(self.period >= 1, "period must be at least 1")
            require(0.0 <= self.decay < 1.0, "decay must be in [0, 1)")
            require(self.planner in ("heaviest", "greedy"), "planner must be heaviest or greedy")

    def __init__(self, params: Params | None = None) -> None:
        self.params = params or self.Params()
        self.setup: BalanceSetup | None = None
        self.history: LoadHistory | None = None
        self.table: np.ndarray | None = None  # [layers, ranks, R] plan of the last rebalance
        self.fresh = False

    def reset(self, setup: BalanceSetup) -> None:
        """Start with an empty average and no replicas."""
        self.setup = setup
        self.history = LoadHistory(setup, self.params.decay)
        self.table = None
        self.fresh = False

    def home(self) -> np.ndarray:
        """Round-robin primary ranks ``[E]``."""
        assert self.setup is not None
        return round_robin_home(self.setup.num_experts, self.setup.ranks)

    def begin_step(self, step: int, phase: int, num_tokens: int) -> None:
        """On a rebalance step, re-plan every layer from the moving average."""
        setup, history = self.setup, self.history
        assert setup is not None and history is not None
        self.fresh = False
        if step == 0 or step % self.params.period != 0:
            return
        home = self.home()
        plan = greedy_replicate if self.params.planner == "greedy" else replicate_heaviest
        self.table = np.stack([plan(history.share[layer], home, setup.ranks,
                                    setup.redundant_slots)
                               for layer in range(setup.num_layers)])  # [layers, ranks, R]
        self.fresh = True

    def plan(self, ctx: BalanceContext) -> np.ndarray | None:
        """The last rebalance's table on a rebalance step, else keep what is resident."""
        if not self.fresh or self.table is None:
            return None
        return self.table[ctx.layer]

    def observe(self, step: int, layer: int, load: np.ndarray) -> None:
        """Fold the layer's load into the moving average."""
        assert self.history is not None
        self.history.update(layer, load)
