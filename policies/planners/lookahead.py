"""Lookahead-h: fetch confident predictions of the next ``h`` layers under a byte budget."""

from __future__ import annotations

from dataclasses import dataclass

from moe_offload_lab.policies.base import FetchPlan
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel, DecisionCost
from moe_offload_lab.policies.planners.base import Planner, register
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.registry import require
from moe_offload_lab.traces.spec import ModelSpec


@register("lookahead")
class LookaheadPlanner(Planner):
    """Nearer layers first, within a layer by confidence; stops at the per-layer budget.

    Each call (one per layer) issues at most ``budget_bytes`` of copies (and at most
    ``budget_experts`` experts when set); only predictions with confidence of at least
    ``min_confidence`` qualify. ``max_distance`` (0 = the policy's horizon) limits how far ahead.
    """

    decision_cost = DecisionCost("cpu", 1.5e-6, 0.05e-6)

    @dataclass(frozen=True)
    class Params:
        """Byte budget per layer, expert budget, confidence threshold, distance, cancellation."""

        budget_bytes: float | None = None
        budget_experts: int = 0
        min_confidence: float = 0.5
        max_distance: int = 0
        cancel_stale: bool = True

        def __post_init__(self) -> None:
            require(self.budget_bytes is None or self.budget_bytes >= 0,
                    "budget_bytes must not be negative")
            require(self.budget_experts >= 0, "budget_experts must not be negative")
            require(0.0 <= self.min_confidence <= 1.0, "min_confidence must lie in [0, 1]")
            require(self.max_distance >= 0, "max_distance must not be negative")

    def reset(self, spec: ModelSpec, capacity_slots: int, cost_model: CostModel,
              horizon: int) -> None:
        """Resolve the budget in keys and the distance limit."""
        super().reset(spec, capacity_slots, cost_model, horizon)
        self.max_keys = self._budget_keys(self.params.budget_bytes, self.params.budget_experts)
        self.distances = min(self.params.max_distance or horizon, horizon)

    def plan(self, ctx: LayerContext, prediction: Prediction | None) -> FetchPlan:
        """Walk distances 1..h, each by falling confidence, until the budget is spent."""
        plan, wanted = self._start_plan(ctx, self.params.cancel_stale), self.wanted
        if prediction is None:
            return plan
        view = ctx.view
        resident, in_flight = view.resident, view.in_flight
        threshold, n_experts, keys = self.params.min_confidence, self.num_experts, plan.keys
        max_keys = min(self.max_keys, max(self.capacity_slots - len(ctx.keys), 0))
        for i in range(self.distances):
            experts, confidence = prediction.ranked[i], prediction.confidence[i]
            base = prediction.targets[i] * n_experts
            for j in range(len(experts)):
                if confidence[j] < threshold:
                    break
                key = base + experts[j]
                if key in resident or key in in_flight:
                    wanted.add(key)
                    continue
                if len(keys) >= max_keys:
                    return plan
                wanted.add(key)
                keys.append(key)
        return plan
