"""Least frequently used, counting every access of the run (resident or not)."""

from __future__ import annotations

import heapq
from collections.abc import Collection

from moe_offload_lab.policies.cache import CacheView
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.replacement.base import ReplacementRule, register
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

_SHIFT = 32  # stamp = accesses << 32 | layer visit at which that count was reached


@register("lfu")
class LFU(ReplacementRule):
    """Evicts the resident key with the fewest accesses so far (whole-run counts, "perfect" LFU).

    Ties go to the key that reached its count earliest (in layer visits), then to the lower key.
    An access rewrites one int per key (``count << 32 | visit``); the min-heap of residents is
    refreshed lazily when a victim is needed (an entry whose stamp changed since it was pushed is
    re-pushed), so an access costs O(1) and an eviction O(log n) amortised.
    """

    decision_cost = DecisionCost("cpu", 2.4e-6, 0.13e-6)

    def reset(self, spec: ModelSpec, capacity_slots: int, trace: Trace | None = None,
              schedule: object = None) -> None:
        """Zero all counts."""
        super().reset(spec, capacity_slots, trace, schedule)
        self._stamp: dict[int, int] = {}  # every key ever accessed -> its stamp
        self._tick = 0
        self._entry: dict[int, int] = {}  # resident key -> stamp of its live heap entry
        self._heap: list[tuple[int, int]] = []  # (stamp, key), refreshed lazily

    def count(self, key: int) -> int:
        """Accesses of ``key`` so far."""
        return self._stamp.get(key, 0) >> _SHIFT

    def on_access(self, ctx: LayerContext) -> None:
        """Count one access per key."""
        self._tick = tick = self._tick + 1
        stamps = self._stamp
        get = stamps.get
        for key in ctx.keys:
            stamps[key] = ((get(key, 0) >> _SHIFT) + 1) << _SHIFT | tick

    def on_insert(self, key: int) -> None:
        """Track the new resident at its current count."""
        stamp = self._stamp.get(key, 0)
        self._entry[key] = stamp
        heapq.heappush(self._heap, (stamp, key))

    def on_remove(self, key: int) -> None:
        """Forget residency (the count stays)."""
        self._entry.pop(key, None)

    def victims(self, view: CacheView, need: int, layer: int, keep: Collection[int],
                soft: Collection[int], out: list[int]) -> None:
        """Lowest counts first; within a count, the key that reached it earliest."""
        target = len(out) + need
        heap, entries, stamps = self._heap, self._entry, self._stamp
        pop, push = heapq.heappop, heapq.heappush
        held: list[tuple[int, int]] = []
        while heap and len(out) < target:
            item = pop(heap)
            stamp, key = item
            if entries.get(key) != stamp:
                continue  # evicted, or superseded by a newer entry
            current = stamps.get(key, 0)
            if current != stamp:
                entries[key] = current
                push(heap, (current, key))
                continue
            held.append(item)
            if key not in keep and key not in soft and key not in out:
                out.append(key)
        for item in held:
            push(heap, item)
        if len(out) < target and len(entries) < len(view.resident):
            self._fallback(view, target, layer, keep, soft, out, entries)
