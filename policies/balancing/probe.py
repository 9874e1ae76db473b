"""PROBE-style per-layer predictive balancing.

For every layer of every step, while the previous layer computes, a lookahead load predictor
(``oracle``, ``lookahead`` or ``history``) estimates the batch's per-expert load and the greedy
planner (:func:`~policies.balancing.planners.greedy_replicate`) copies hot experts onto light
ranks (at most R per rank). The current replicas are kept when they are within
``keep_tolerance`` of the new plan's predicted maximum, which saves NVLink traffic.
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
from moe_offload_lab.policies.balancing.load_predictors import PREDICTOR_KINDS, LoadPredictor
from moe_offload_lab.policies.balancing.planners import greedy_replicate
from moe_offload_lab.policies.balancing.registry import BALANCERS
from moe_offload_lab.policies.balancing.split import rank_loads, split_tokens
from moe_offload_lab.policies.registry import require


@BALANCERS.register("probe")
class ProbeBalancer(BalancePolicy):
    """Predict the next layer's load, then replicate greedily onto light ranks."""

    @dataclass(frozen=True)
    class Params:
        """``predictor``: oracle | lookahead | history; ``distance``: which lookahead column;
        ``decay``: history moving average; ``candidates``: hot experts tried per round;
        ``keep_tolerance``: relative slack before replacing the resident replicas;
        ``time_aware``: judge a new plan by the engine's cost figures (slowest rank's expert
        time plus the stall its copies would cause) instead of token counts alone."""

        predictor: str = "lookahead"
        distance: int = 1
        decay: float = 0.8
        candidates: int = 3
        keep_tolerance: float = 0.02
        time_aware: bool = True

        def __post_init__(self) -> None:
            require(self.predictor in PREDICTOR_KINDS,
                    f"predictor must be one of {', '.join(PREDICTOR_KINDS)}")
            require(self.distance >= 1, "distance must be at least 1")
            require(0.0 <= self.decay < 1.0, "decay must be in [0, 1)")
            require(self.candidates >= 1, "candidates must be at least 1")
            require(self.keep_tolerance >= 0.0, "keep_tolerance must not be negative")

    def __init__(self, params: Params | None = None) -> None:
        self.params = params or self.Params()
        self.predictor = LoadPredictor(self.params.predictor, self.params.distance,
                                       self.params.decay)
        self.is_oracle = self.predictor.is_oracle
        self.setup: BalanceSetup | None = None
        self._home: np.ndarray | None = None

    def reset(self, setup: BalanceSetup) -> None:
        """Clear the predictor's statistics."""
        self.setup = setup
        self.predictor.reset(setup)
        self._home = round_robin_home(setup.num_experts, setup.ranks)

    def home(self) -> np.ndarray:
        """Round-robin primary ranks ``[E]``."""
        assert self._home is not None
        return self._home

    def begin_step(self, step: int, phase: int, num_tokens: int) -> None:
        """Nothing per step: every layer is planned on its own."""

    def plan(self, ctx: BalanceContext) -> np.ndarray | None:
        """Greedy replication for the predicted load of ``ctx.layer``."""
        setup, home = self.setup, self._home
        assert setup is not None and home is not None
        if setup.redundant_slots == 0:
            return None
        predicted = self.predictor.predict(ctx)  # [experts]
        new = greedy_replicate(predicted, home, setup.ranks, setup.redundant_slots,
                               candidates=self.params.candidates)
        if np.array_equal(new, ctx.current):
            return None
        whole = np.rint(predicted).astype(np.int64)
        if self.params.time_aware and setup.expert_time_s is not None:
            return new if self._pays_off(whole, new, ctx) else None
        if (ctx.current >= 0).any():
            keep_max = rank_loads(whole, home, ctx.current).max()
            new_max = rank_loads(whole, home, new).max()
            if keep_max <= new_max * (1.0 + self.params.keep_tolerance):
                return None
        return new

    def _pays_off(self, whole: np.ndarray, new: np.ndarray, ctx: BalanceContext) -> bool:
        """True when the new plan's slowest rank, plus the stall its copies would cause beyond
        the previous layer's time, beats the resident plan by more than the tolerance."""
        setup, home = self.setup, self._home
        assert setup is not None and home is not None and setup.expert_time_s is not None
        keep_s = float(setup.expert_time_s(split_tokens(whole, home, ctx.current)).max())
        new_s = float(setup.expert_time_s(split_tokens(whole, home, new)).max())
        copies = max((len(set(new[r][new[r] >= 0].tolist())
                          - set(ctx.current[r][ctx.current[r] >= 0].tolist()))
                      for r in range(setup.ranks)), default=0)
        window = keep_s + (setup.attention_s(ctx.num_tokens) if setup.attention_s else 0.0)
        stall = max(0.0, copies * setup.copy_s - window)
        return new_s + stall < keep_s * (1.0 - self.params.keep_tolerance)

    def observe(self, step: int, layer: int, load: np.ndarray) -> None:
        """Feed the history statistics (used by ``history`` and as lookahead fallback)."""
        self.predictor.observe(layer, load)
