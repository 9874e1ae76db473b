"""Cost-aware cross-layer prefetch, greedy: the baseline PreScope's PreSched is compared with.

Over the next ``h`` layers, choose which predicted experts to copy, and in what order, to minimise
the expected stall, given the link (bandwidth and per-copy latency from the cost model, and the
copies already queued on it), the time until each target layer runs, and each prediction's
confidence.

Model (all from :class:`~policies.cost.CostModel`):

- one copy takes ``x = transfer_s()``; the copies in flight finish first (``backlog = n * x``);
- layer ``l + d`` starts after ``wait + d * layer_s``, where ``wait`` covers this layer's demand
  copies still in flight and ``layer_s = layer_other_s + m * gpu_expert_fixed_s +
  B * k * gpu_expert_s_per_token`` is the current layer's own time (``m`` distinct experts);
- a needed expert that was not prefetched costs a demand stall of ``x`` (or the CPU's extra time
  over the GPU's when ``consider_cpu`` and that is smaller); one prefetched but finishing at ``f``
  stalls ``max(0, f - deadline)``;
- a wrong prefetch (probability ``1 - c``) wastes ``x`` of link time, weighed by ``waste_weight``.

Greedy: candidates by falling confidence; each is placed at its earliest-deadline-first position
among those already accepted and kept when ``c * (miss - late) > (1 - c) * waste_weight * x``.
The plan is issued earliest deadline first. Only as many candidates per distance as the link can
still usefully move are considered, which keeps the call O(h * n).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from moe_offload_lab.policies.base import FetchPlan
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel, DecisionCost
from moe_offload_lab.policies.planners.base import Planner, register
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.registry import require
from moe_offload_lab.traces.spec import ModelSpec


@register("cost-aware")
class CostAwarePlanner(Planner):
    """Expected-stall minimising prefetch over the horizon, greedy (see module docstring);
    :class:`~policies.planners.presched.PreSched` solves the same kind of plan exactly."""

    decision_cost = DecisionCost("cpu", 3.0e-6, 0.05e-6)

    @dataclass(frozen=True)
    class Params:
        """Confidence floor, weight of wasted link time, optional byte budget, cancellation."""

        min_confidence: float = 0.05
        waste_weight: float = 1.0
        budget_bytes: float | None = None
        cancel_stale: bool = True
        consider_cpu: bool = False

        def __post_init__(self) -> None:
            require(0.0 <= self.min_confidence <= 1.0, "min_confidence must lie in [0, 1]")
            require(self.waste_weight >= 0, "waste_weight must not be negative")
            require(self.budget_bytes is None or self.budget_bytes >= 0,
                    "budget_bytes must not be negative")

    def reset(self, spec: ModelSpec, capacity_slots: int, cost_model: CostModel,
              horizon: int) -> None:
        """Precompute the copy time, the per-layer time terms and the budget."""
        super().reset(spec, capacity_slots, cost_model, horizon)
        cm, params = cost_model, self.params
        self.copy_s = cm.transfer_s()
        self.max_keys = self._budget_keys(params.budget_bytes, 0)
        self._other_s = cm.layer_other_s
        self._fixed_s = cm.gpu_expert_fixed_s
        self._token_s = cm.gpu_expert_s_per_token * spec.top_k
        self._threshold = params.min_confidence
        self._waste_s = params.waste_weight * self.copy_s
        self._accepted_deadlines: list[float] = []
        self._accepted: list[tuple[float, float, int]] = []
        self._candidates: list[tuple[float, float, int]] = []

    def _miss_s(self, tokens: int) -> float:
        """Stall of a needed expert that was not prefetched."""
        if not self.params.consider_cpu:
            return self.copy_s
        cm = self.cost_model
        extra = cm.cpu_expert_s(tokens) - cm.gpu_expert_s(tokens)
        return min(self.copy_s, max(extra, 0.0))

    def _frame(self, ctx: LayerContext, plan: FetchPlan,
               horizon: int) -> tuple[float, float, float, int]:
        """The timing a plan is made in, shared with PreSched: ``backlog_s`` (copies already on
        the link, after cancelling stale ones into ``plan.cancel``), ``wait_s`` (this layer's
        demand copies still in flight), ``layer_s`` (one layer's run time) and the most keys
        worth planning (the link's useful copies before the last deadline plus one miss, the
        budget, the free room)."""
        in_flight = ctx.view.in_flight
        copy_s, n_experts = self.copy_s, self.num_experts
        backlog_s = wait_s = 0.0
        if in_flight:
            if self.params.cancel_stale:
                self._cancel_stale(ctx, plan)
            layer = ctx.layer
            demand = 0
            for key in in_flight:
                if key // n_experts == layer:
                    demand += 1
            backlog_s = (len(in_flight) - len(plan.cancel)) * copy_s
            wait_s = demand * copy_s
        current_keys = ctx.keys
        layer_s = (self._other_s + len(current_keys) * self._fixed_s
                   + ctx.num_tokens * self._token_s)
        wait_s += self._cpu_overrun_s(ctx, layer_s)
        miss_s = self._miss_s(max(ctx.num_tokens, 1))
        last_deadline = wait_s + horizon * layer_s
        useful = math.ceil((last_deadline + miss_s - backlog_s) / copy_s)
        max_keys = min(self.max_keys, useful, self.capacity_slots - len(current_keys))
        return backlog_s, wait_s, layer_s, max_keys

    def _cpu_overrun_s(self, ctx: LayerContext, layer_s: float) -> float:
        """How much longer than its GPU work the current layer runs because of the experts it
        computes on the CPU (the current keys neither resident nor in flight), serially."""
        view = ctx.view
        resident, in_flight = view.resident, view.in_flight
        cpu_s = 0.0
        for key, tokens in zip(ctx.keys, ctx.tokens_per_expert, strict=False):
            if key not in resident and key not in in_flight:
                cpu_s += self.cost_model.cpu_expert_s(tokens)
        return max(0.0, cpu_s - layer_s)

    def plan(self, ctx: LayerContext, prediction: Prediction | None) -> FetchPlan:
        """Greedy expected-stall plan (see module docstring)."""
        plan, wanted = self._start_plan(ctx, False), self.wanted
        n_experts, copy_s = self.num_experts, self.copy_s
        horizon = prediction.horizon if prediction is not None else 1
        backlog_s, wait_s, layer_s, max_keys = self._frame(ctx, plan, horizon)
        if prediction is None:
            return plan
        resident, in_flight = ctx.view.resident, ctx.view.in_flight
        miss_s = self._miss_s(max(ctx.num_tokens, 1))
        if max_keys <= 0:
            return plan
        threshold = self._threshold
        candidates = self._candidates
        candidates.clear()
        ranked_all, confidence_all, targets = (prediction.ranked, prediction.confidence,
                                               prediction.targets)
        for i in range(horizon):
            confidence = confidence_all[i]
            base = targets[i] * n_experts
            deadline = wait_s + (i + 1) * layer_s
            taken = 0
            for j, expert in enumerate(ranked_all[i]):
                conf = confidence[j]
                if conf < threshold:
                    break
                key = base + expert
                if key in resident or key in in_flight:
                    wanted.add(key)
                    continue
                candidates.append((-conf, deadline, key))
                taken += 1
                if taken >= max_keys:
                    break
        if not candidates:
            return plan
        candidates.sort()
        deadlines, accepted = self._accepted_deadlines, self._accepted
        deadlines.clear()
        accepted.clear()
        waste_s = self._waste_s
        for neg_conf, deadline, key in candidates:
            conf = -neg_conf
            position = bisect.bisect_right(deadlines, deadline)  # EDF slot among accepted
            finish = backlog_s + (position + 1) * copy_s
            late = finish - deadline if finish > deadline else 0.0
            if conf * (miss_s - late) <= (1.0 - conf) * waste_s:
                continue
            deadlines.insert(position, deadline)
            accepted.insert(position, (deadline, neg_conf, key))
            if len(accepted) >= max_keys:
                break
        keys = plan.keys
        for _, _, key in accepted:
            keys.append(key)
            wanted.add(key)
        return plan
