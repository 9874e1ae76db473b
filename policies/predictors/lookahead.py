"""Gate lookahead: apply later layers' routers to the current hidden state.

As in mixtral-offloading (speculative next-layer gating), Pre-gated MoE, HOBBIT (stacked later
gates) and PROBE (gate-initialised lookahead predictor): at layer ``l`` the lookahead column ``d``
holds the experts layer ``l + d``'s router would pick from layer ``l``'s hidden state. Replayed
traces carry the columns; in the executor the live router fills the same ``ctx.lookahead`` field.
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


@register("gate-lookahead")
class GateLookaheadPredictor(Predictor):
    """Scores the experts picked by the lookahead columns.

    A token's lookahead pick at distance ``d`` is assumed right with probability
    ``confidence[d - 1]`` (the last value repeats for further distances); an expert picked by
    ``n`` tokens of the batch scores ``1 - (1 - c) ** n``. At batch 1 the ranking is the gate's
    own order. Distances without a lookahead column predict nothing.
    """

    decision_cost = DecisionCost("cpu", 8e-07, 2.5e-07)
    reads_lookahead = True

    @dataclass(frozen=True)
    class Params:
        """``confidence``: assumed per-token precision of the lookahead pick, per distance."""

        confidence: tuple[float, ...] = (0.9, 0.8, 0.7)

        def __post_init__(self) -> None:
            require(len(self.confidence) > 0, "confidence needs at least one value")
            require(all(0.0 < c <= 1.0 for c in self.confidence),
                    "confidence values must lie in (0, 1]")

    def reset(self, spec: ModelSpec, horizon: int, trace: Trace | None = None,
              schedule: object = None, seed: int = 0) -> None:
        """Precompute per-distance confidence tuples."""
        super().reset(spec, horizon, trace, schedule, seed)
        conf = self.params.confidence
        self._conf = [conf[min(i, len(conf) - 1)] for i in range(horizon)]
        k = spec.top_k
        # [h][n] tuples of n copies of the distance's confidence, n = 0..k
        self._const = [[(c,) * n for n in range(k + 1)] for c in self._conf]
        self._distances = [(i, i + 1, self._const[i]) for i in range(horizon)]

    def predict(self, ctx: LayerContext) -> Prediction:
        """Read ``ctx.lookahead[d]`` [B, k] for d = 1..h."""
        pred = self.prediction
        pred.begin(ctx.step, ctx.layer)
        lookahead = ctx.lookahead
        if not lookahead:
            return pred
        ranked, confidence = pred.ranked, pred.confidence
        if ctx.num_tokens == 1:  # the gate's own order, one confidence per distance
            for i, d, const in self._distances:
                picks = lookahead.get(d)
                if picks is None:
                    continue
                experts = picks.tolist()[0]  # [k]
                if experts[0] < 0 or experts[-1] < 0:
                    experts = [e for e in experts if e >= 0]
                    if not experts:
                        continue
                ranked[i] = experts
                confidence[i] = const[len(experts)]
            return pred
        for i in range(self.horizon):
            picks = lookahead.get(i + 1)
            if picks is None:
                continue
            flat = picks.ravel()  # [B * k]
            flat = flat[flat >= 0]
            if flat.size == 0:
                continue
            counts = np.bincount(flat, minlength=self.num_experts)  # [E]
            experts_arr = np.flatnonzero(counts)
            tokens = counts[experts_arr]
            order = np.argsort(-tokens, kind="stable")
            ranked[i] = experts_arr[order].tolist()
            confidence[i] = (1.0 - (1.0 - self._conf[i]) ** tokens[order]).tolist()
        return pred
