"""Admission rules: admit everything, nothing, or only experts seen often enough."""

from __future__ import annotations

from dataclasses import dataclass

from moe_offload_lab.policies.admission.base import Admission, register
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.registry import require
from moe_offload_lab.traces.spec import ModelSpec


@register("always")
class AlwaysAdmit(Admission):
    """Every fetched expert is cached (plain demand paging)."""

    def admit(self, key: int, ctx: LayerContext) -> bool:
        """Always True."""
        return True


@register("never")
class NeverAdmit(Admission):
    """Nothing is cached: every fetched expert is streamed through a scratch buffer and dropped
    after its layer (the on-demand bound, as in plain layer-by-layer offloading)."""

    def admit(self, key: int, ctx: LayerContext) -> bool:
        """Always False."""
        return False


@register("min-count")
class MinCountAdmit(Admission):
    """Cache an expert only from its ``min_count``-th access on (one-off experts are streamed).

    Counts cover the whole run, including the current access.
    """

    observes = True
    decision_cost = DecisionCost("cpu", 0.3e-6, 0.02e-6)

    @dataclass(frozen=True)
    class Params:
        """``min_count``: accesses (this one included) needed before an expert is cached."""

        min_count: int = 2

        def __post_init__(self) -> None:
            require(self.min_count >= 1, "min_count must be at least 1")

    def reset(self, spec: ModelSpec, capacity_slots: int) -> None:
        """Zero the counts."""
        self._counts: dict[int, int] = {}

    def on_access(self, ctx: LayerContext) -> None:
        """Count each key once per access."""
        counts = self._counts
        for key in ctx.keys:
            counts[key] = counts.get(key, 0) + 1

    def admit(self, key: int, ctx: LayerContext) -> bool:
        """True once the key was accessed ``min_count`` times."""
        return self._counts.get(key, 0) >= self.params.min_count
