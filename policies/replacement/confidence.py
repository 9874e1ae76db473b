"""Confidence-aware replacement, in the spirit of Prophet: keep experts predicted soon.

Residents the predictor expects within its horizon with confidence at least ``keep_threshold``
are evicted last (lowest confidence first among them); all others go in LRU order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

from moe_offload_lab.policies.cache import CacheView
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.registry import require
from moe_offload_lab.policies.replacement.base import ReplacementRule, register
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec


@register("confidence")
class ConfidenceAware(ReplacementRule):
    """LRU that protects confidently predicted experts (needs a predictor)."""

    uses_prediction = True
    decision_cost = DecisionCost("cpu", 4.0e-6, 0.15e-6)

    @dataclass(frozen=True)
    class Params:
        """``keep_threshold``: minimum predicted confidence that protects a resident."""

        keep_threshold: float = 0.3

        def __post_init__(self) -> None:
            require(0.0 <= self.keep_threshold <= 1.0, "keep_threshold must lie in [0, 1]")

    def reset(self, spec: ModelSpec, capacity_slots: int, trace: Trace | None = None,
              schedule: object = None) -> None:
        """Empty the recency order and the protected set."""
        super().reset(spec, capacity_slots, trace, schedule)
        self._order: OrderedDict[int, None] = OrderedDict()
        self._predicted: dict[int, float] = {}
        self._version = -1
        self._prediction: Prediction | None = None

    def bind_prediction(self, prediction: Prediction) -> None:
        """Keep a reference to the predictor's reused prediction."""
        self._prediction = prediction

    def on_access(self, ctx: LayerContext) -> None:
        """LRU bookkeeping."""
        order = self._order
        for key in ctx.keys:
            if key in order:
                order.move_to_end(key)

    def on_insert(self, key: int) -> None:
        """Most recent."""
        self._order[key] = None
        self._order.move_to_end(key)

    def on_remove(self, key: int) -> None:
        """Forget ``key``."""
        self._order.pop(key, None)

    def _refresh(self) -> None:
        pred = self._prediction
        if pred is None or pred.version == self._version:
            return
        self._version = pred.version
        predicted = self._predicted
        predicted.clear()
        threshold, n_experts = self.params.keep_threshold, self.num_experts
        for i in range(pred.horizon):
            base = pred.targets[i] * n_experts
            for expert, conf in zip(pred.ranked[i], pred.confidence[i], strict=False):
                if conf < threshold:
                    break
                key = base + expert
                if conf > predicted.get(key, 0.0):
                    predicted[key] = conf

    def victims(self, view: CacheView, need: int, layer: int, keep: Collection[int],
                soft: Collection[int], out: list[int]) -> None:
        """Unpredicted residents in LRU order, then predicted ones by rising confidence."""
        self._refresh()
        target = len(out) + need
        predicted = self._predicted
        for key in self._order:
            if len(out) >= target:
                return
            if key not in predicted and key not in keep and key not in soft \
                    and key not in out:
                out.append(key)
        if len(out) < target and predicted:
            order = self._order
            for _, key in sorted((c, k) for k, c in predicted.items() if k in order):
                if len(out) >= target:
                    return
                if key not in keep and key not in soft and key not in out:
                    out.append(key)
        if len(out) < target and len(self._order) < len(view.resident):
            self._fallback(view, target, layer, keep, soft, out, self._order)
