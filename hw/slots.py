"""The device expert cache: a fixed pool of slots plus scratch buffers for streamed experts.

:class:`SlotPool` owns one device tensor ``[S, P]`` (row ``i`` is slot ``i``, one contiguous
buffer) and a :class:`policies.cache.SlotCache` that tracks which key is resident or in flight
(the same :class:`~policies.cache.CacheView` a policy sees in the simulator); the pool only adds
the key -> slot mapping and, per slot, the fences a new copy into it must wait for: the last copy
written there (a cancelled CUDA copy still lands) and the last compute that read it.
:func:`slots_for` sizes the pool with :meth:`sim.memory.GpuMemory.plan`, as the simulator does.
:class:`ScratchPool` holds the buffers that streamed (non-admitted) experts pass through; it grows
on demand up to one layer's experts.
"""

from __future__ import annotations

from typing import Any

import torch
from moe_offload_lab.hw.device import Device
from moe_offload_lab.policies.cache import SlotCache
from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.sim.memory import GpuMemory
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.spec import ModelSpec


def slots_for(spec: ModelSpec, hardware: HardwareProfile, capacity_slots: int | None = None,
              gpu_memory_gb: float | None = None) -> int:
    """Cache slots from an explicit count or a GPU memory budget (one of them), as the simulator
    sizes them (:meth:`sim.memory.GpuMemory.plan`); ConfigError when it cannot work."""
    if (capacity_slots is None) == (gpu_memory_gb is None):
        raise ConfigError("give exactly one of capacity_slots and gpu_memory_gb")
    if capacity_slots is not None:
        if isinstance(capacity_slots, bool) or not isinstance(capacity_slots, int) \
                or capacity_slots < 1:
            raise ConfigError(f"capacity_slots must be a positive integer, got {capacity_slots!r}")
        cache = {"slots": capacity_slots}
    else:
        cache = {"gpu_memory_gb": gpu_memory_gb}
    slots = GpuMemory.plan(cache, spec, hardware).slots
    assert slots is not None
    return slots


class _Fenced:
    """Per-buffer fences: the last write (copy) into it and the last read (compute) from it."""

    def __init__(self, n: int) -> None:
        self.write: list[Any] = [None] * n
        self.read: list[Any] = [None] * n

    def grow(self) -> None:
        self.write.append(None)
        self.read.append(None)

    def wait_free(self, index: int, stream: Any) -> None:
        """Order ``stream`` after every pending use of buffer ``index`` (before overwriting it)."""
        for fence in (self.write[index], self.read[index]):
            if fence is not None and not fence.query():
                stream.wait(fence)


class SlotPool:
    """``capacity_slots`` device slots and their bookkeeping (see module docstring)."""

    def __init__(self, spec: ModelSpec, capacity_slots: int, numel: int, device: Device,
                 partition_slots: list[int] | None = None) -> None:
        self.spec = spec
        self.num_experts = spec.num_experts
        self.cache = SlotCache(capacity_slots, spec.num_experts, spec.num_moe_layers,
                               partition_slots)
        self.buffer = device.empty(capacity_slots, numel)  # [S, P]
        self.slot_of: dict[int, int] = {}
        self._free = list(range(capacity_slots - 1, -1, -1))  # pop() gives the lowest slot
        self.fences = _Fenced(capacity_slots)

    def start_fetch(self, key: int) -> int:
        """Take a free slot for ``key`` (marked in flight); returns the slot index."""
        self.cache.start_fetch(key)
        slot = self._free.pop()
        self.slot_of[key] = slot
        return slot

    def complete_fetch(self, key: int) -> None:
        """The copy into ``key``'s slot completed: resident."""
        self.cache.complete_fetch(key)

    def remove(self, key: int) -> int:
        """Free ``key``'s slot (evicted or cancelled); returns the slot index."""
        self.cache.remove(key)
        slot = self.slot_of.pop(key)
        self._free.append(slot)
        self._free.sort(reverse=True)
        return slot

    def weights(self, key: int) -> torch.Tensor:
        """Device buffer [P] holding ``key`` (resident or in flight)."""
        return self.buffer[self.slot_of[key]]

    def used(self) -> int:
        """Occupied slots."""
        return len(self.slot_of)


class ScratchPool:
    """Device buffers for streamed experts, reused layer after layer; grows to the largest
    number of streamed experts of one layer."""

    def __init__(self, numel: int, device: Device) -> None:
        self.numel = numel
        self.device = device
        self.buffers: list[torch.Tensor] = []  # each [P]
        self.fences = _Fenced(0)

    def get(self, index: int) -> torch.Tensor:
        """Scratch buffer ``index`` [P] (allocated on first use)."""
        while len(self.buffers) <= index:
            self.buffers.append(self.device.empty(self.numel))  # [P]
            self.fences.grow()
        return self.buffers[index]
