"""No prefetching: experts are fetched when a layer needs them."""

from __future__ import annotations

from moe_offload_lab.policies.base import FetchPlan
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.planners.base import Planner, register
from moe_offload_lab.policies.prediction import Prediction


@register("on-demand")
class OnDemand(Planner):
    """Always the empty plan."""

    uses_prediction = False
    never_plans = True

    def plan(self, ctx: LayerContext, prediction: Prediction | None) -> FetchPlan:
        """Nothing to fetch or cancel."""
        return self.out
