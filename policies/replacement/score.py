"""Frequency weighted by layer distance, in the spirit of MoE-Infinity's expert cache priority.

A resident key's priority is ``(accesses + 1) * (1 - distance_weight * (dist - 1) / L)`` where
``dist`` in ``1..L`` is how many layers ahead of the current one its layer runs next (the layer
right after the current one has ``dist = 1``; the current layer's own experts ``dist = L``, as
they are next used in the following step). The lowest priority is evicted: rarely used experts
whose layer comes round last go first.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from moe_offload_lab.policies.cache import CacheView
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.registry import require
from moe_offload_lab.policies.replacement.base import ReplacementRule, register
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec


@register("freq-distance")
class FrequencyDistance(ReplacementRule):
    """MoE-Infinity-style priority: access frequency times a layer-proximity weight."""

    decision_cost = DecisionCost("cpu", 2.7e-6, 0.15e-6)

    @dataclass(frozen=True)
    class Params:
        """``distance_weight`` in [0, 1]: 0 is plain LFU, 1 weighs the furthest layer near 0."""

        distance_weight: float = 0.9

        def __post_init__(self) -> None:
            require(0.0 <= self.distance_weight <= 1.0, "distance_weight must lie in [0, 1]")

    def reset(self, spec: ModelSpec, capacity_slots: int, trace: Trace | None = None,
              schedule: object = None) -> None:
        """Zero counts, precompute the distance weights of every current layer."""
        super().reset(spec, capacity_slots, trace, schedule)
        from moe_offload_lab.policies.replacement import _score_kernel  # numba: on first use

        self._kernel = _score_kernel
        n_layers, n_experts = self.num_layers, self.num_experts
        self._counts = np.ones(n_layers * n_experts, dtype=np.float64)  # [L*E] accesses + 1
        self._layer_of = np.repeat(np.arange(n_layers, dtype=np.int64), n_experts)  # [L*E]
        self._slot_of: dict[int, int] = {}  # resident key -> index in _keys
        self._keys = np.zeros(max(capacity_slots, 1), dtype=np.int64)  # [capacity] residents
        self._n_resident = 0
        layers = np.arange(n_layers)
        weights = np.empty((n_layers, n_layers), dtype=np.float64)  # [current, layer]
        for current in range(n_layers):
            dist = (layers - current - 1) % n_layers + 1  # [L] in 1..L
            weights[current] = 1.0 - self.params.distance_weight * (dist - 1) / n_layers
        self._weights = weights
        self._layer = 0
        self._buffer_keys = np.zeros(64, dtype=np.int64)  # [m] kernel output
        self._buffer_priority = np.zeros(64, dtype=np.float64)  # [m]

    def on_access(self, ctx: LayerContext) -> None:
        """Count one access per key."""
        self._layer = ctx.layer
        keys = ctx.keys
        if len(keys) <= 8:
            counts = self._counts
            for key in keys:
                counts[key] += 1.0
        else:
            self._counts[np.asarray(keys, dtype=np.int64)] += 1.0

    def on_insert(self, key: int) -> None:
        """Append to the compact resident array."""
        if key in self._slot_of:
            return
        n = self._n_resident
        if n == self._keys.shape[0]:
            self._keys = np.concatenate([self._keys, np.zeros(n, dtype=np.int64)])
        self._keys[n] = key
        self._slot_of[key] = n
        self._n_resident = n + 1

    def on_remove(self, key: int) -> None:
        """Swap-remove from the compact resident array."""
        index = self._slot_of.pop(key, None)
        if index is None:
            return
        last = self._n_resident - 1
        if index != last:
            moved = int(self._keys[last])
            self._keys[index] = moved
            self._slot_of[moved] = index
        self._n_resident = last

    def victims(self, view: CacheView, need: int, layer: int, keep: Collection[int],
                soft: Collection[int], out: list[int]) -> None:
        """Lowest priorities first (ties: lower key first)."""
        if need <= 0:
            return
        target = len(out) + need
        weights = self._weights[self._layer]
        m = need + len(keep) + len(out) + min(len(soft), 8)
        while True:
            m = min(m, self._n_resident)
            if m <= 0:
                break
            if self._buffer_keys.shape[0] < m:
                self._buffer_keys = np.zeros(2 * m, dtype=np.int64)  # [>= m]
                self._buffer_priority = np.zeros(2 * m, dtype=np.float64)  # [>= m]
            n = self._kernel.lowest(self._counts, self._keys, self._n_resident, weights,
                                    self._layer_of, m, self._buffer_keys,
                                    self._buffer_priority)
            for key in self._buffer_keys[:n].tolist():
                if key not in keep and key not in soft and key not in out:
                    out.append(key)
                    if len(out) >= target:
                        return
            if n < m or m >= self._n_resident:
                break
            m *= 4  # the excluded keys crowded the window: widen it
        if len(out) < target and self._n_resident < len(view.resident):
            self._fallback(view, target, layer, keep, soft, out, self._slot_of)
