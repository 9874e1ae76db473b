"""History: conditional expert frequencies between layers, learned online.

For each distance ``d`` the predictor counts, per token, how often expert ``f`` was used at layer
``l + d`` when expert ``e`` was used at layer ``l`` (Prophet's observation that routing history
carries most of the exploitable information). At layer ``l`` a token with experts ``S`` is
predicted to use ``f`` at ``l + d`` with the mean over ``s`` in ``S`` of ``P(f | s)``; a batch
needs ``f`` with ``1 - (1 - p) ** B`` where ``p`` averages over the batch's (token, expert) pairs.
Transitions are learned within a step only, so wrap-around targets are not predicted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.predictors.base import Predictor, register
from moe_offload_lab.policies.registry import require
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec


@register("history")
class HistoryPredictor(Predictor):
    """Online first-order (per distance) transition model between MoE layers."""

    decision_cost = DecisionCost("cpu", 4.7e-06, 1e-07)

    learns = True

    @dataclass(frozen=True)
    class Params:
        """``max_candidates``: keep at most this many experts per distance; 0 keeps
        ``min(E, k * B)``, the most a batch of B tokens can need, which loses nothing."""

        max_candidates: int = 0

        def __post_init__(self) -> None:
            require(self.max_candidates >= 0, "max_candidates must not be negative")

    def reset(self, spec: ModelSpec, horizon: int, trace: Trace | None = None,
              schedule: object = None, seed: int = 0) -> None:
        """Zero the transition counts."""
        super().reset(spec, horizon, trace, schedule, seed)
        from moe_offload_lab.policies.predictors import _history_kernels  # numba: on first use

        self._kernels = _history_kernels
        n_keys, n_experts = spec.num_expert_keys, spec.num_experts
        # float32 counts are exact up to 2**24 per cell and halve the memory traffic
        self._pairs = np.zeros((horizon, n_keys, n_experts), dtype=np.float32)  # [h, L*E, E]
        self._sources = np.zeros((horizon, n_keys), dtype=np.float32)  # [h, L*E]
        self._buffer = np.zeros((self.num_layers, 1, spec.top_k), dtype=np.int64)  # [L, B, k]
        self._top_k = spec.top_k
        self._scratch = np.zeros(n_experts, dtype=np.float64)  # [E]
        self._out_experts = np.zeros((horizon, n_experts), dtype=np.int64)  # [h, E]
        self._out_scores = np.zeros((horizon, n_experts), dtype=np.float64)  # [h, E]
        self._out_counts = np.zeros(horizon, dtype=np.int64)  # [h]

    def observe(self, ctx: LayerContext) -> None:
        """Count transitions from the batch's tokens at layers ``l - d`` to layer ``l``."""
        routing = ctx.routing
        if routing is None:
            return
        if self._buffer.shape[1] < routing.shape[0]:
            self._buffer = np.zeros((self.num_layers, routing.shape[0], self._buffer.shape[2]),
                                    dtype=np.int64)  # [L, B, k]
        self._kernels.observe(self._pairs, self._sources, self._buffer, ctx.layer, routing,
                              self.horizon, self.num_experts)

    def predict(self, ctx: LayerContext) -> Prediction:
        """Mean conditional frequency of each target expert given the layer's experts."""
        pred = self.prediction
        pred.begin(ctx.step, ctx.layer)
        routing = ctx.routing
        if routing is None:
            return pred
        limit = min(self.num_experts, self._top_k * routing.shape[0])
        if self.params.max_candidates:
            limit = min(limit, self.params.max_candidates)
        self._kernels.predict(self._pairs, self._sources, routing, ctx.layer, self.num_layers,
                              self.num_experts, self.horizon, limit, self._scratch,
                              self._out_experts, self._out_scores, self._out_counts)
        counts = self._out_counts.tolist()
        widest = max(counts)
        if widest:
            experts = self._out_experts[:, :widest].tolist()  # [h][widest]
            scores = self._out_scores[:, :widest].tolist()
            ranked, confidence = pred.ranked, pred.confidence
            for i, n in enumerate(counts):
                if n:
                    ranked[i] = experts[i][:n] if n < widest else experts[i]
                    confidence[i] = scores[i][:n] if n < widest else scores[i]
        return pred
