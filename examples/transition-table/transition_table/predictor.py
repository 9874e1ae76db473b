"""A transition-table predictor: a Markov chain over MoE layers, learned online with forgetting.

For every pair of adjacent MoE layers ``(l, l + 1)`` it keeps a table ``T[l]`` [E, E] of weighted
counts: how often a token routed to expert ``s`` at layer ``l`` was routed to expert ``t`` at
layer ``l + 1``. Counts decay by ``decay`` per step (recent routing weighs more, so the table
follows a drifting workload; ``decay: 1`` never forgets). At layer ``l`` each token's
distribution is its gate-weighted top-k at ``l``; the chain carries it forward,
``p(l + d) = p(l + d - 1) @ P[l + d - 1]`` with ``P`` the row-normalised table plus a
``prior`` pseudo-count, so one table per layer pair serves every distance. A token uses expert
``t`` at the target with ``min(1, k * p_t)`` (``p`` is the law of one of its ``k`` picks) and
the batch needs ``t`` with ``1 - prod_tokens(1 - that)`` (noisy-or). Targets past the last
layer (the next step's layers) are not predicted.

This differs from the built-in ``history`` predictor, which counts every distance's co-occurrence
directly and never forgets: here only adjacent layers are counted and further distances come
from chaining, and old routing fades.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.predictors.base import Predictor
from moe_offload_lab.policies.registry import require
from moe_offload_lab.traces.spec import ModelSpec

_RESCALE_AT = 1e100  # increments grow as decay**-t; rescale everything before they overflow


class TransitionTablePredictor(Predictor):
    """Adjacent-layer expert transition tables with exponential forgetting, chained for
    distances beyond one layer (see the module docstring)."""

    learns = True
    # a declared figure, charged until `moe-policy cost --policies ...` measures the predictor
    decision_cost = DecisionCost("cpu", 20e-6, 1e-6)

    @dataclass(frozen=True)
    class Params:
        """``decay``: per-step weight kept by older transitions (0 < decay <= 1); ``prior``:
        pseudo-count spread over a row (smooths unseen transitions); ``min_score``: experts
        needed with a lower probability are not predicted."""

        decay: float = 0.98
        prior: float = 0.05
        min_score: float = 0.05

        def __post_init__(self) -> None:
            require(0.0 < self.decay <= 1.0, "decay must lie in (0, 1]")
            require(self.prior >= 0.0, "prior must not be negative")
            require(0.0 <= self.min_score <= 1.0, "min_score must lie in [0, 1]")

    def reset(self, spec: ModelSpec, horizon: int, trace=None, schedule=None,  # noqa: ANN001
              seed: int = 0) -> None:
        """Empty tables for the model's layer pairs."""
        super().reset(spec, horizon, trace, schedule, seed)
        n_pairs, n_experts = max(spec.num_moe_layers - 1, 1), spec.num_experts
        self._counts = np.zeros((n_pairs, n_experts, n_experts))  # [L-1, E, E]
        self._row_sums = np.zeros((n_pairs, n_experts))  # [L-1, E] (row sums of _counts)
        self._weight = 1.0  # the current step's increment (decay ** -step)
        self._previous: np.ndarray | None = None  # [B, k] routing of the layer before
        self._last_step = -1

    def observe(self, ctx: LayerContext) -> None:
        """Count the batch's transitions from the previous layer to this one."""
        routing = ctx.routing  # [B, k]
        if routing is None:
            return
        if ctx.step != self._last_step:
            self._last_step = ctx.step
            self._weight /= self.params.decay
            if self._weight > _RESCALE_AT:
                self._counts /= self._weight
                self._row_sums /= self._weight
                self._weight = 1.0
            self._previous = None
        previous = self._previous
        if ctx.layer > 0 and previous is not None and len(previous) == len(routing):
            pair = ctx.layer - 1
            # every (source, target) pair of each token: indices broadcast to [B, k, k]
            np.add.at(self._counts[pair], (previous[:, :, None], routing[:, None, :]),
                      self._weight)
            np.add.at(self._row_sums[pair], previous, self._weight * routing.shape[1])
        self._previous = routing.copy()

    def predict(self, ctx: LayerContext) -> Prediction:
        """Chain the tokens' distributions forward and take the batch's noisy-or need."""
        pred = self.prediction
        pred.begin(ctx.step, ctx.layer)
        routing, gates = ctx.routing, ctx.gates  # [B, k], [B, k]
        if routing is None:
            return pred
        p = self.params
        n_tokens, top_k = routing.shape
        dist = np.zeros((n_tokens, self.num_experts))  # [B, E]
        dist[np.arange(n_tokens)[:, None], routing] = gates / np.maximum(
            gates.sum(axis=1, keepdims=True), 1e-12)  # a token's k experts are distinct
        floor = max(p.min_score, 1e-12)
        for i in range(self.horizon):
            source = ctx.layer + i  # the table from this layer to the next
            if source + 1 >= self.num_layers:
                break  # the target lies in the next step
            # dist @ row-normalised (counts + prior / E), without building that table
            scaled = dist / (self._row_sums[source] + p.prior)  # [B, E]
            dist = scaled @ self._counts[source]  # [B, E]
            dist += (p.prior / self.num_experts) * scaled.sum(axis=1, keepdims=True)
            need = 1.0 - np.prod(1.0 - np.minimum(1.0, top_k * dist), axis=0)  # [E]
            order = np.flatnonzero(need >= floor)
            order = order[np.argsort(-need[order], kind="stable")]
            pred.ranked[i] = order.tolist()
            pred.confidence[i] = need[order].tolist()
        return pred
