"""No prefetching: experts are fetched when a layer needs them."""

from __future__ import annotations

from policies.base import FetchPlan
from policies.context import LayerContext
from policies.planners.base import Planner, register
from policies.prediction import Prediction


@register("on-demand")
class OnDemand(Planner):
    """Always the empty plan."""

    uses_prediction = False

    def plan(self, ctx: LayerContext, prediction: Prediction | None) -> FetchPlan:
        """Nothing to fetch or cancel."""
        return self.out
