"""The prefetch planner interface."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

from moe_offload_lab.policies.base import FetchPlan
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel, DecisionCost
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.registry import PLANNERS, NoParams
from moe_offload_lab.traces.spec import ModelSpec

register = PLANNERS.register


class Planner(ABC):
    """Turns a prediction into a :class:`~policies.base.FetchPlan` at each layer.

    After :meth:`plan`, :attr:`wanted` holds every key the plan counts on (resident ones
    included) and :attr:`version` has been increased; the composed policy protects wanted keys
    from eviction while other victims exist.
    """

    name = "planner"
    uses_prediction = True
    #: True for a planner whose plan is always empty and that keeps no state (no prefetching):
    #: a composed policy then declares :attr:`~policies.base.Policy.quiet_no_prefetch`
    never_plans = False
    Params: type = NoParams
    decision_cost = DecisionCost("cpu", 0.0, 0.0)

    def __init__(self, params: object = None) -> None:
        self.params = params if params is not None else self.Params()
        self.out = FetchPlan()
        self.wanted: set[int] = set()
        self.version = 0  # bumped whenever wanted changes

    def reset(self, spec: ModelSpec, capacity_slots: int, cost_model: CostModel,
              horizon: int) -> None:
        """Prepare for a run. Subclasses extend it (calling ``super().reset``)."""
        self.spec = spec
        self.num_experts = spec.num_experts
        self.capacity_slots = capacity_slots
        self.cost_model = cost_model
        self.horizon = horizon
        self.expert_bytes = spec.expert_bytes
        self.out = FetchPlan()
        self.wanted = set()

    @abstractmethod
    def plan(self, ctx: LayerContext, prediction: Prediction | None) -> FetchPlan:
        """``Policy.prefetch``: fill and return :attr:`out`; update :attr:`wanted`."""

    # ---- helpers -------------------------------------------------------------------------------
    def _start_plan(self, ctx: LayerContext, cancel_stale: bool) -> FetchPlan:
        """Empty :attr:`out` and :attr:`wanted` for a new plan, bump :attr:`version`, and list
        the stale in-flight copies of this layer when ``cancel_stale``."""
        plan = self.out
        plan.keys.clear()
        plan.cancel.clear()
        self.wanted.clear()
        self.version += 1
        if cancel_stale:
            self._cancel_stale(ctx, plan)
        return plan

    def _budget_keys(self, budget_bytes: float | None, budget_experts: int) -> int:
        """Most keys one plan may hold under a byte and an expert budget (0 = no limit)."""
        limit = self.capacity_slots
        if budget_bytes is not None:
            limit = min(limit, int(math.floor(budget_bytes / self.expert_bytes)))
        if budget_experts:
            limit = min(limit, budget_experts)
        return limit

    def _cancel_stale(self, ctx: LayerContext, plan: FetchPlan) -> None:
        """Cancel in-flight copies of this layer's experts that its real routing does not use."""
        in_flight = ctx.view.in_flight
        if not in_flight:
            return
        layer, n_experts, keys = ctx.layer, self.num_experts, ctx.keys
        for key in in_flight:
            if key // n_experts == layer and key not in keys:
                plan.cancel.append(key)
