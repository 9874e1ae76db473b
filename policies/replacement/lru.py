"""Least recently used, over the whole cache or per layer (mixtral-offloading's layout)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

from moe_offload_lab.policies.cache import CacheView, even_partitions
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.registry import require
from moe_offload_lab.policies.replacement.base import ReplacementRule, register
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec


@register("lru")
class LRU(ReplacementRule):
    """Evicts the resident key whose last access (or arrival) is oldest; one shared pool."""

    decision_cost = DecisionCost("cpu", 1.0e-6, 0.1e-6)

    def reset(self, spec: ModelSpec, capacity_slots: int, trace: Trace | None = None,
              schedule: object = None) -> None:
        """Empty the recency order."""
        super().reset(spec, capacity_slots, trace, schedule)
        self._order: OrderedDict[int, None] = OrderedDict()  # resident keys, oldest first

    def on_access(self, ctx: LayerContext) -> None:
        """Accessed resident keys become the most recent."""
        order = self._order
        for key in ctx.keys:
            if key in order:
                order.move_to_end(key)

    def on_insert(self, key: int) -> None:
        """A new resident is the most recent."""
        order = self._order
        if key in order:
            order.move_to_end(key)
        else:
            order[key] = None

    def on_remove(self, key: int) -> None:
        """Forget ``key``."""
        self._order.pop(key, None)

    def victims(self, view: CacheView, need: int, layer: int, keep: Collection[int],
                soft: Collection[int], out: list[int]) -> None:
        """Oldest evictable keys first."""
        start = len(out)
        for key in self._order:
            if len(out) - start >= need:
                return
            if key in keep or key in soft or key in out:
                continue
            out.append(key)
        if len(out) - start < need and len(self._order) < len(view.resident):
            self._fallback(view, start + need, layer, keep, soft, out, self._order)


@register("lru-per-layer")
class PerLayerLRU(ReplacementRule):
    """LRU within per-layer partitions (mixtral-offloading): each layer owns an equal share.

    ``slots_per_layer`` fixes each layer's quota (0 = split the cache evenly). A layer's quota
    must hold at least top_k experts.
    """

    decision_cost = DecisionCost("cpu", 1.1e-6, 0.01e-6)

    @dataclass(frozen=True)
    class Params:
        """``slots_per_layer``: quota of every layer; 0 splits the capacity evenly."""

        slots_per_layer: int = 0

        def __post_init__(self) -> None:
            require(self.slots_per_layer >= 0, "slots_per_layer must not be negative")

    def reset(self, spec: ModelSpec, capacity_slots: int, trace: Trace | None = None,
              schedule: object = None) -> None:
        """Split the capacity and empty every layer's order."""
        super().reset(spec, capacity_slots, trace, schedule)
        n_layers = spec.num_moe_layers
        per = self.params.slots_per_layer
        if per:
            if per * n_layers > capacity_slots:
                raise ConfigError(f"lru-per-layer: {per} slots for each of {n_layers} layers "
                                  f"exceed the cache's {capacity_slots} slots")
            self._parts = [per] * n_layers
        else:
            self._parts = even_partitions(capacity_slots, n_layers)
        if min(self._parts) < spec.top_k:
            raise ConfigError(f"lru-per-layer: a cache of {capacity_slots} slots gives some layer "
                              f"{min(self._parts)} slots, fewer than top_k={spec.top_k}; "
                              f"needs at least {spec.top_k * n_layers} slots")
        self._orders: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(n_layers)]

    def partition_slots(self) -> list[int] | None:
        """Per-layer quotas."""
        return list(self._parts)

    def on_access(self, ctx: LayerContext) -> None:
        """Accessed resident keys become their layer's most recent."""
        order = self._orders[ctx.layer]
        for key in ctx.keys:
            if key in order:
                order.move_to_end(key)

    def on_insert(self, key: int) -> None:
        """A new resident is its layer's most recent."""
        order = self._orders[key // self.num_experts]
        if key in order:
            order.move_to_end(key)
        else:
            order[key] = None

    def on_remove(self, key: int) -> None:
        """Forget ``key``."""
        layer = key // self.num_experts
        if 0 <= layer < self.num_layers:
            self._orders[layer].pop(key, None)

    def victims(self, view: CacheView, need: int, layer: int, keep: Collection[int],
                soft: Collection[int], out: list[int]) -> None:
        """Oldest evictable keys of ``layer``'s partition (of the fullest layer if -1)."""
        if layer < 0:
            layer = max(range(self.num_layers), key=lambda i: len(self._orders[i]))
        order = self._orders[layer]
        start = len(out)
        for key in order:
            if len(out) - start >= need:
                return
            if key in keep or key in soft or key in out:
                continue
            out.append(key)
        if len(out) - start < need and len(order) < view.used_slots(layer):
            self._fallback(view, start + need, layer, keep, soft, out, order)
