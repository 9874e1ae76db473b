"""Next-layer top-n: fetch the ``n`` best-scored experts of the next layer."""

from __future__ import annotations

from dataclasses import dataclass

from moe_offload_lab.policies.base import FetchPlan
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel, DecisionCost
from moe_offload_lab.policies.planners.base import Planner, register
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.registry import require
from moe_offload_lab.traces.spec import ModelSpec


@register("next-layer")
class NextLayerTopN(Planner):
    """Prefetch the top-``n`` predicted experts of layer ``l + 1`` not already present.

    Its byte budget is ``n`` experts per layer. ``n = 0`` means top_k.
    """

    decision_cost = DecisionCost("cpu", 1.0e-6, 0.05e-6)

    @dataclass(frozen=True)
    class Params:
        """``n`` experts (0 = top_k), minimum confidence, stale-copy cancellation."""

        n: int = 0
        min_confidence: float = 0.0
        cancel_stale: bool = False

        def __post_init__(self) -> None:
            require(self.n >= 0, "n must not be negative")
            require(0.0 <= self.min_confidence <= 1.0, "min_confidence must lie in [0, 1]")

    def reset(self, spec: ModelSpec, capacity_slots: int, cost_model: CostModel,
              horizon: int) -> None:
        """Resolve ``n``."""
        super().reset(spec, capacity_slots, cost_model, horizon)
        self.n = min(self.params.n or spec.top_k, capacity_slots)
        self._threshold, self._cancel_stale_copies = (self.params.min_confidence,
                                                      self.params.cancel_stale)

    def plan(self, ctx: LayerContext, prediction: Prediction | None) -> FetchPlan:
        """Top-n of distance 1, skipping resident and in-flight keys."""
        plan = self._start_plan(ctx, self._cancel_stale_copies)
        if prediction is None:
            return plan
        experts = prediction.ranked[0]
        if not experts:
            return plan
        n, threshold = self.n, self._threshold
        if len(experts) > n:
            experts = experts[:n]
        if threshold > 0.0:
            confidence = prediction.confidence[0]
            if confidence[len(experts) - 1] < threshold:
                cut = 0
                while cut < len(experts) and confidence[cut] >= threshold:
                    cut += 1
                experts = experts[:cut]
        base = prediction.targets[0] * self.num_experts
        view = ctx.view
        resident, in_flight = view.resident, view.in_flight
        add, append = self.wanted.add, plan.keys.append
        for expert in experts:
            key = base + expert
            add(key)
            if key not in resident and key not in in_flight:
                append(key)
        return plan
