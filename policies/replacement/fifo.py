"""First in, first out and last in, first out: arrival order only, accesses ignored."""

from __future__ import annotations

from collections.abc import Collection

from moe_offload_lab.policies.cache import CacheView
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.replacement.base import ReplacementRule, register
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec


@register("fifo")
class FIFO(ReplacementRule):
    """Evicts the key that arrived first."""

    decision_cost = DecisionCost("cpu", 1.0e-6, 0.08e-6)
    _newest_first = False

    def reset(self, spec: ModelSpec, capacity_slots: int, trace: Trace | None = None,
              schedule: object = None) -> None:
        """Empty the arrival order."""
        super().reset(spec, capacity_slots, trace, schedule)
        self._arrival: dict[int, None] = {}  # resident keys in arrival order

    def on_access(self, ctx: LayerContext) -> None:
        """Accesses do not matter."""

    def on_insert(self, key: int) -> None:
        """Record the arrival."""
        self._arrival[key] = None

    def on_remove(self, key: int) -> None:
        """Forget ``key``."""
        self._arrival.pop(key, None)

    def victims(self, view: CacheView, need: int, layer: int, keep: Collection[int],
                soft: Collection[int], out: list[int]) -> None:
        """Oldest (FIFO) or newest (LIFO) arrivals first."""
        target = len(out) + need
        keys = reversed(self._arrival) if self._newest_first else iter(self._arrival)
        for key in keys:
            if len(out) >= target:
                return
            if key not in keep and key not in soft and key not in out:
                out.append(key)
        if len(out) < target and len(self._arrival) < len(view.resident):
            self._fallback(view, target, layer, keep, soft, out, self._arrival)


@register("lifo")
class LIFO(FIFO):
    """Evicts the key that arrived last (keeps the oldest residents: a static working set)."""

    _newest_first = True
