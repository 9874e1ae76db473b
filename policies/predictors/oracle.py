"""The oracle predictor - an UPPER BOUND: reads the batch's future routing from the trace."""

from __future__ import annotations

import numpy as np
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.needs import step_experts
from moe_offload_lab.policies.prediction import Prediction, ones
from moe_offload_lab.policies.predictors.base import Predictor, register
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec


@register("oracle")
class OraclePredictor(Predictor):
    """Upper bound: scores 1 exactly for the experts the batch will need, 0 elsewhere.

    Targets inside the current step come from the trace rows of the step (``ctx.rows`` or the
    schedule); wrap-around targets (early layers of the next step) need the schedule and are
    empty without it. Not deployable: it reads the future.
    """

    decision_cost = DecisionCost("cpu", 6e-07, 2e-08)

    is_oracle = True

    def reset(self, spec: ModelSpec, horizon: int, trace: Trace | None = None,
              schedule: object = None, seed: int = 0) -> None:
        """Keep the trace and schedule; the oracle cannot work without the trace."""
        super().reset(spec, horizon, trace, schedule, seed)
        if trace is None:
            raise ConfigError("the oracle predictor (an upper bound) needs the replayed trace")
        self._ids = trace.expert_ids  # [T, L, k]
        self._schedule = schedule
        self._current: list[list[int]] | None = None
        self._next: list[list[int]] | None = None
        self._next_step = -1

    def _experts(self, rows: np.ndarray) -> list[list[int]]:
        return step_experts(self._ids[rows], self.num_experts)[0]

    def begin_step(self, ctx: LayerContext) -> None:
        """Look up this step's (and, with a schedule, the next step's) needs per layer."""
        step, schedule = ctx.step, self._schedule
        if step == self._next_step and self._next is not None:
            self._current = self._next
        elif schedule is not None and 0 <= step < len(schedule):
            self._current = self._experts(schedule[step])
        elif ctx.rows is not None:
            self._current = self._experts(ctx.rows)
        else:
            raise ConfigError("the oracle predictor needs the trace rows of each step "
                              "(ctx.rows or a schedule)")
        if schedule is not None and step + 1 < len(schedule):
            self._next = self._experts(schedule[step + 1])
            self._next_step = step + 1
        else:
            self._next, self._next_step = None, -1

    def predict(self, ctx: LayerContext) -> Prediction:
        """Exactly the needed experts of each target layer, with confidence 1."""
        pred = self.prediction
        pred.begin(ctx.step, ctx.layer)
        current, upcoming = self._current, self._next
        ranked, confidence, wraps = pred.ranked, pred.confidence, pred.wraps
        for i, target in enumerate(pred.targets):
            source = upcoming if wraps[i] else current
            if source is not None:
                experts = source[target]
                ranked[i] = experts
                confidence[i] = ones(len(experts))
        return pred
