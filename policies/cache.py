"""The cache as a policy sees it: a read-only view, and a reference slot cache.

Engines own GPU memory; policies only read it through :class:`CacheView`. A cache holds
``capacity_slots`` expert-sized slots. A key is *resident* once its copy has completed and
*in flight* while the copy runs; both occupy a slot. When a policy asks for per-layer partitions
(``Policy.partition_slots`` after ``reset``), slot ``i`` of the list is the quota of MoE layer
``i`` and a key may only use its own layer's slots.

:class:`SlotCache` is the plain reference implementation used by offline evaluation and the
tests; engines may use it too or implement the protocol over their own structures.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable


class CacheError(RuntimeError):
    """A cache operation that breaks the cache's rules (a bug in an engine or a policy)."""


@runtime_checkable
class CacheView(Protocol):
    """Read-only state of an expert cache. Implemented by engines; never mutated by policies.

    ``resident`` and ``in_flight`` support fast ``in`` and iteration over plain int keys; they are
    live (they change as the engine works), so a policy must not keep iterators across calls.
    """

    capacity_slots: int
    partition_slots: Sequence[int] | None
    resident: Collection[int]
    in_flight: Collection[int]

    def free_slots(self, layer: int = -1) -> int:
        """Free slots: of the whole cache, or of ``layer``'s partition when partitioned."""
        ...

    def used_slots(self, layer: int = -1) -> int:
        """Occupied slots (resident plus in flight), overall or in ``layer``'s partition."""
        ...


class SlotCache:
    """Reference :class:`CacheView` implementation with instant or two-phase fetches.

    ``insert`` places a key at once (offline evaluation); ``start_fetch`` and ``complete_fetch``
    model a copy in progress. Every operation checks the cache's rules and raises
    :class:`CacheError` when broken.
    """

    def __init__(self, capacity_slots: int, num_experts: int, num_layers: int,
                 partition_slots: Sequence[int] | None = None) -> None:
        if capacity_slots < 1:
            raise CacheError(f"a cache needs at least one slot, got {capacity_slots}")
        self.capacity_slots = int(capacity_slots)
        self.num_experts = int(num_experts)
        self.num_layers = int(num_layers)
        self.resident: set[int] = set()
        self.in_flight: set[int] = set()
        self.partition_slots: list[int] | None = None
        self._used = [0] * self.num_layers  # [L] occupied slots per layer
        self._occupied = 0  # len(resident) + len(in_flight), kept by the mutators
        if partition_slots is not None:
            parts = [int(p) for p in partition_slots]
            if len(parts) != self.num_layers or min(parts) < 0:
                raise CacheError("partition_slots needs one non-negative quota per MoE layer")
            if sum(parts) > self.capacity_slots:
                raise CacheError(f"partitions hold {sum(parts)} slots, more than the cache's "
                                 f"{self.capacity_slots}")
            self.partition_slots = parts

    # ---- view ----------------------------------------------------------------------------------
    def free_slots(self, layer: int = -1) -> int:
        """Free slots overall, or in ``layer``'s partition when the cache is partitioned."""
        if self.partition_slots is not None and layer >= 0:
            return self.partition_slots[layer] - self._used[layer]
        return self.capacity_slots - self._occupied

    def used_slots(self, layer: int = -1) -> int:
        """Occupied slots overall, or of ``layer``'s keys."""
        if layer >= 0:
            return self._used[layer]
        return self._occupied

    def __contains__(self, key: int) -> bool:
        return key in self.resident

    def __len__(self) -> int:
        return self._occupied

    # ---- mutation (engines and offline evaluation only) -----------------------------------------
    def start_fetch(self, key: int) -> None:
        """Allocate a slot for ``key`` and mark it in flight."""
        if key in self.resident or key in self.in_flight:
            raise CacheError(f"key {key} already holds a slot")
        layer = key // self.num_experts
        if not 0 <= layer < self.num_layers:
            raise CacheError(f"key {key} lies outside [0, {self.num_layers * self.num_experts})")
        if self.free_slots(layer) <= 0:
            raise CacheError(f"no free slot for key {key} (layer {layer})")
        self.in_flight.add(key)
        self._used[layer] += 1
        self._occupied += 1

    def complete_fetch(self, key: int) -> None:
        """The copy of ``key`` finished: it becomes resident."""
        if key not in self.in_flight:
            raise CacheError(f"key {key} is not in flight")
        self.in_flight.remove(key)
        self.resident.add(key)

    def insert(self, key: int) -> None:
        """Fetch ``key`` instantly (``start_fetch`` then ``complete_fetch``)."""
        self.start_fetch(key)
        self.in_flight.remove(key)
        self.resident.add(key)

    def remove(self, key: int) -> None:
        """Free ``key``'s slot, whether resident or in flight (eviction or cancellation)."""
        if key in self.resident:
            self.resident.remove(key)
        elif key in self.in_flight:
            self.in_flight.remove(key)
        else:
            raise CacheError(f"key {key} holds no slot")
        self._used[key // self.num_experts] -= 1
        self._occupied -= 1

    def clear(self) -> None:
        """Drop everything."""
        self.resident.clear()
        self.in_flight.clear()
        self._used = [0] * self.num_layers
        self._occupied = 0


def even_partitions(capacity_slots: int, num_layers: int) -> list[int]:
    """Split a cache evenly over layers; the first ``capacity % L`` layers get one slot more."""
    base, extra = divmod(capacity_slots, num_layers)
    return [base + (1 if layer < extra else 0) for layer in range(num_layers)]
