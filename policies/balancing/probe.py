"""PROBE (Zhu et al., 2026, arXiv:2602.00509): per-layer predictive expert balancing.

PROBE's "continuous lookahead pipelining", as modelled here:

1. **Predict** (its own stream, when layer ``l``'s router has run): the load of layer ``l + 1``
   from the batch's layer-``l`` hidden state. ``predictor: learned`` (the default,
   ``conf/balance/probe.yaml``) is PROBE's gate-initialised lookahead predictor (the next
   layer's real gate applied to the current hidden state as the prior, plus a trained residual
   MLP; :mod:`policies.balancing.load_predictors`); ``gate`` is the prior alone
   (``probe-gate``); ``history`` and ``oracle`` are the ablation and the upper bound. Layer 0 of a
   step has no earlier layer and uses the history. The predicted loads are summed over ranks (a
   small all-reduce).
2. **Plan** (same stream): the greedy of :func:`~policies.balancing.planners.plan_replicas`:
   which hot experts to replicate onto which light ranks and how to split their tokens, scoring
   ranks by predicted expert time, with at most ``R`` replicas per rank and, per rank, only the
   copies the engine's hiding window (``ctx.copy_budget``) has room for.
3. **Prefetch**: the replicas are copied into a double-buffered pool of ``2 R`` expert buffers
   per rank (``pool = "double-buffer"``): layer ``l + 1``'s bank fills while layer ``l``
   computes with the other one. The engine runs the copies on each rank's link, yielding it to
   the all-to-all (PROBE's phase-locked co-scheduling), and a copy that is late delays its rank.

Decision time is declared, not measured from this Python: prediction is the roofline of the
next-gate GEMM on a rank's tokens (plus the residual MLP for ``learned``), the all-reduce is the
cluster's, and planning is ``plan_s`` (an assumption: the paper gives no figure here).

What differs from the paper: the planner is a greedy on a closed-form instance-time model (the
paper's solver is not public); the split-phase transmission is modelled as copies pausing during
the all-to-all, not as chunked sub-transfers; the predictor's residual needs a trace with
hidden-state features, and under the simulator's label-shift volatility
(:func:`sim.cluster.workloads.volatile_trace`) the features do not follow the relabelling, so
there the prior carries the prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moe_offload_lab.policies.balancing.base import (
    BalanceContext,
    BalancePolicy,
    BalanceSetup,
    Plan,
    StepBatch,
    home_slots,
    round_robin_home,
)
from moe_offload_lab.policies.balancing.load_predictors import PREDICTOR_KINDS, LoadPredictor
from moe_offload_lab.policies.balancing.planners import TOKENS, InstanceCost, plan_replicas
from moe_offload_lab.policies.balancing.registry import BALANCERS
from moe_offload_lab.policies.registry import require


@BALANCERS.register("probe")
class ProbeBalancer(BalancePolicy):
    """Predict the next layer's load, then replicate greedily onto light ranks (see module)."""

    pool = "double-buffer"

    @dataclass(frozen=True)
    class Params:
        """``predictor``: learned (PROBE's) | gate | history | oracle; ``checkpoint``: the
        ``learned`` model (``auto``: trained once per trace setting and cached by the cluster
        simulator, :mod:`sim.cluster.predictor_cache`); ``distance``: lookahead distance
        read; ``decay``: history moving average; ``candidates``: hot experts tried per round;
        ``targets``: light ranks tried per expert; ``min_gain``: smallest relative improvement
        of the largest rank time a round must make; ``time_aware``: score ranks by predicted
        expert time (false: token counts); ``window``: respect the hiding window (false: copy
        whatever helps, late or not); ``plan_s``: seconds the planner takes per layer
        (declared)."""

        predictor: str = "learned"
        checkpoint: str = "auto"
        distance: int = 1
        decay: float = 0.8
        candidates: int = 3
        targets: int = 2
        min_gain: float = 0.01
        time_aware: bool = True
        window: bool = True
        plan_s: float = 3.0e-5

        def __post_init__(self) -> None:
            require(self.predictor in PREDICTOR_KINDS,
                    f"predictor must be one of {', '.join(PREDICTOR_KINDS)}")
            require(self.distance >= 1, "distance must be at least 1")
            require(0.0 <= self.decay < 1.0, "decay must be in [0, 1)")
            require(self.candidates >= 1 and self.targets >= 1,
                    "candidates and targets must be at least 1")
            require(0.0 < self.min_gain < 1.0, "min_gain must be in (0, 1)")
            require(self.plan_s >= 0.0, "plan_s must not be negative")

    def __init__(self, params: Params | None = None) -> None:
        self.params = params or self.Params()
        p = self.params
        self.predictor = LoadPredictor(p.predictor, p.distance, p.decay, p.checkpoint)
        self.is_oracle = self.predictor.is_oracle
        self.setup: BalanceSetup | None = None

    def reset(self, setup: BalanceSetup) -> None:
        """Clear the predictor's statistics; fix the home placement and the cost model."""
        self.setup = setup
        self.predictor.reset(setup)
        self._home = round_robin_home(setup.num_experts, setup.ranks)
        self._home_table = home_slots(self._home, setup.ranks, setup.base_slots)
        self._node = np.arange(setup.ranks) // setup.ranks_per_node
        self._cost = TOKENS
        if self.params.time_aware and setup.instance_s is not None:
            big = 4096
            t = setup.instance_s(np.array([1, big // 2, big]))
            self._cost = InstanceCost(float(t[0]), float(t[2] - t[1]) / (big // 2))

    def home(self) -> np.ndarray:
        """Round-robin home ranks ``[E]`` (they never change: replicas live in the pool)."""
        return self._home

    def begin_step(self, batch: StepBatch) -> None:
        """Predict the step's layers (gate and learned predictors work a step at a time)."""
        self.predictor.begin_step(batch)

    def plan(self, ctx: BalanceContext) -> Plan | None:
        """Replicas and token shares for the predicted load of ``ctx.layer``."""
        setup = self.setup
        assert setup is not None
        if setup.redundant_slots == 0:
            return None
        predicted = self.predictor.predict(ctx)  # [experts]
        budget = ctx.copy_budget if self.params.window else \
            np.full(setup.ranks, setup.redundant_slots)
        replicas, share = plan_replicas(
            predicted, self._home, self._home_table, setup.redundant_slots, budget, self._cost,
            self.params.candidates, self.params.targets, self.params.min_gain, self._node)
        return Plan(np.concatenate([self._home_table, replicas], axis=1), share)

    def observe(self, step: int, layer: int, load: np.ndarray) -> None:
        """Feed the history statistics (the ``history`` predictor and layer 0)."""
        self.predictor.observe(layer, load)

    def decision_s(self, tokens_per_rank: int) -> tuple[float, float]:
        """(prediction, planning) seconds: for ``gate`` and ``learned`` the next-gate GEMM (and
        the residual MLP) on a rank's tokens plus the all-reduce of the predicted loads (history
        and oracle predictions cost nothing here); ``plan_s``."""
        setup = self.setup
        assert setup is not None
        if setup.redundant_slots == 0:
            return 0.0, 0.0
        predict = 0.0
        kind = self.predictor.kind
        if kind in ("gate", "learned"):
            predict = setup.allreduce_s
            if setup.matmul_s is not None and tokens_per_rank:
                predict += setup.matmul_s(tokens_per_rank, setup.hidden_size, setup.num_experts)
                if kind == "learned":
                    predict += self.predictor.model.residual_s(setup.matmul_s, tokens_per_rank)
        return predict, self.params.plan_s
