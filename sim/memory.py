"""GPU memory: how many expert slots a run gets, and whether the whole thing fits on the card.

The expert cache is sized by, in order of precedence:

- ``cache.slots``: an explicit count; ``0`` means *no cache*: room for one layer's experts only
  (``min(E, top_k x the largest step's tokens)``), so nothing survives from one layer to the next
  (the on-demand bound);
- ``cache.gpu_memory_gb``: a GPU memory budget (GB, 1e9 bytes) for the resident weights (non-
  expert weights and shared experts) plus the cache; the slots are what is left over, whole
  experts only, at most every routed expert (a larger budget is not an error);
- ``cache.fraction``: of all routed experts (``num_moe_layers x num_experts``).

The resident weights are always charged. ``fits_gpu_memory`` in the summary says whether resident
weights plus cache fit in the profile's GPU memory (activations and KV cache not counted); with
``cache.strict_memory: true`` a run that does not fit is refused instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.spec import ModelSpec

CACHE_KEYS = {"fraction", "slots", "gpu_memory_gb", "preload", "strict_memory"}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class GpuMemory:
    """A run's GPU memory plan; ``slots`` is ``None`` until :meth:`resolve` (no-cache mode)."""

    slots: int | None
    resident_bytes: int
    expert_bytes: int
    gpu_bytes: int
    strict: bool

    @classmethod
    def plan(cls, cache: dict[str, Any], spec: ModelSpec, hardware: HardwareProfile) -> GpuMemory:
        """Validate the ``cache`` group and size the cache (see the module docstring)."""
        unknown = sorted(set(cache) - CACHE_KEYS)
        if unknown:
            raise ConfigError(f"unknown cache key(s): {', '.join(unknown)}")
        resident = spec.non_expert_bytes + spec.shared_expert_bytes * spec.num_moe_layers
        strict = bool(cache.get("strict_memory", False))
        slots = cache.get("slots")
        budget = cache.get("gpu_memory_gb")
        if slots is not None:
            if isinstance(slots, bool) or not isinstance(slots, int) or slots < 0:
                raise ConfigError(f"cache.slots must be an integer >= 0, got {slots!r}")
            slots = slots or None  # 0: resolved against the schedule
        elif budget is not None:
            if not _number(budget) or budget <= 0:
                raise ConfigError(f"cache.gpu_memory_gb must be a positive number, "
                                  f"got {budget!r}")
            if budget * 1e9 > hardware.gpu_mem_bytes:
                raise ConfigError(f"cache.gpu_memory_gb={budget} exceeds {hardware.name}'s "
                                  f"{hardware.gpu_mem_bytes / 1e9:.1f} GB")
            slots = int((budget * 1e9 - resident) // spec.expert_bytes)
            if slots < spec.top_k:
                raise ConfigError(
                    f"a GPU budget of {budget} GB holds {max(slots, 0)} experts of "
                    f"{spec.name} after {resident / 1e9:.2f} GB of resident weights; one layer "
                    f"needs {spec.top_k} ({spec.expert_bytes / 1e6:.1f} MB each)")
            slots = min(slots, spec.num_expert_keys)  # room for every expert: all of them
        else:
            fraction = cache.get("fraction", 0.5)
            if not _number(fraction) or not 0 < fraction <= 1:
                raise ConfigError(f"cache.fraction must be in (0, 1], got {fraction!r}")
            slots = max(1, int(round(fraction * spec.num_expert_keys)))
        if slots is not None:
            _check_slots(slots, spec)
        memory = cls(slots, resident, spec.expert_bytes, hardware.gpu_mem_bytes, strict)
        if slots is not None:
            memory._check_fit(hardware.name)
        return memory

    def resolve(self, spec: ModelSpec, largest_step_tokens: int) -> GpuMemory:
        """The plan with its slots fixed (no-cache mode: one layer's experts at most)."""
        if self.slots is not None:
            return self
        slots = min(spec.num_experts, spec.top_k * max(1, largest_step_tokens))
        return GpuMemory(slots, self.resident_bytes, self.expert_bytes, self.gpu_bytes,
                         self.strict)

    @property
    def needed_bytes(self) -> int:
        """Resident weights plus the cache."""
        return self.resident_bytes + (self.slots or 0) * self.expert_bytes

    @property
    def fits(self) -> bool:
        """Whether :attr:`needed_bytes` fit in the GPU's memory."""
        return self.needed_bytes <= self.gpu_bytes

    def _check_fit(self, hardware: str) -> None:
        if self.strict and not self.fits:
            raise ConfigError(f"{self.needed_bytes / 1e9:.1f} GB of weights and expert cache do "
                              f"not fit in {hardware}'s {self.gpu_bytes / 1e9:.1f} GB "
                              f"(cache.strict_memory is set)")

    def summary(self) -> dict[str, Any]:
        """The summary keys of the plan (``capacity_slots`` ...)."""
        return {"capacity_slots": self.slots, "cache_bytes": (self.slots or 0) * self.expert_bytes,
                "resident_bytes": self.resident_bytes,
                "gpu_memory_needed_gb": self.needed_bytes / 1e9,
                "gpu_memory_gb": self.gpu_bytes / 1e9, "fits_gpu_memory": self.fits}


def _check_slots(slots: int, spec: ModelSpec) -> None:
    if slots < spec.top_k:
        raise ConfigError(f"a cache of {slots} slots is smaller than one layer's top-k "
                          f"({spec.top_k}) of {spec.name}")
    if slots > spec.num_expert_keys:
        raise ConfigError(f"a cache of {slots} slots exceeds {spec.name}'s "
                          f"{spec.num_expert_keys} routed experts")
