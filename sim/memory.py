"""GPU memory: how many expert slots a run gets, and whether the whole thing fits on the card.

The expert cache is sized by, in order of precedence:

- ``cache.slots``: an explicit count; ``0`` means *no cache*: room for one layer's experts only
  (``min(E, top_k x the largest step's tokens)``), so nothing survives from one layer to the next
  (the on-demand bound);
- ``cache.slots_per_layer``: ``K`` slots for each MoE layer (``K x num_moe_layers``;
  mixtral-offloading's per-layer LRU of ``K`` experts with a per-layer policy);
- ``cache.gpu_memory_gb``: a GPU memory budget (GB, 1e9 bytes) for the resident weights (non-
    expert weights at their own precision, and shared experts) plus the cache; the slots are what
    is left over, whole experts only, at most every routed expert (a larger budget is not an error);
- ``cache.fraction``: of all routed experts (``num_moe_layers x num_experts``).

``fits_gpu_memory`` in the summary says whether everything the run needs on the GPU fits in the
profile's memory: resident weights, the cache, the KV cache at the run's peak (every attention
layer's keys and values for the longest contexts running together), the activations of the
largest step, and what the runtime reserves (``system.reserved_gpu_gib``: CUDA context,
allocator slack). With ``cache.strict_memory: true`` a run that does not fit is refused instead:
weights, cache and reserve are checked before the trace is read, the KV cache and activations
once the schedule is known.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from moe_offload_lab.sim.compute import kv_bytes_per_token
from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.sim.system import SystemProfile
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.spec import ModelSpec

CACHE_KEYS = {"fraction", "slots", "slots_per_layer", "gpu_memory_gb", "preload",
              "strict_memory"}
ACTIVATION_BYTES = 2  # bf16 activations
LOGIT_BYTES = 4  # logits in fp32


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def activation_bytes(spec: ModelSpec, step_tokens: int) -> int:
    """Peak activation memory of a step of ``step_tokens`` tokens: per token its hidden states
    (residual, normed, attention output and projections: ``8 x hidden``), the routed experts'
    intermediates (``3 x top_k x intermediate``, bf16) and its logits (fp32)."""
    per_token = ((8 * spec.hidden_size + 3 * spec.top_k * spec.expert_intermediate_size)
                 * ACTIVATION_BYTES + spec.vocab_size * LOGIT_BYTES)
    return int(step_tokens * per_token)


def kv_cache_bytes(spec: ModelSpec, context_tokens: int) -> int:
    """KV cache holding ``context_tokens`` tokens in every attention layer."""
    return int(context_tokens) * kv_bytes_per_token(spec) * spec.num_layers


def peak_context(schedule: list[np.ndarray], request_id: np.ndarray,
                 position: np.ndarray) -> int:
    """The most KV-cache entries alive at once over a static schedule: per step, the sum over
    its requests of their longest context so far (position + 1). A request's cache lives from
    its first step to its last, so the peak is reached at a step that holds all of them."""
    if not schedule:
        return 0
    rows = np.concatenate(schedule)  # [R]
    steps = np.repeat(np.arange(len(schedule)), [len(r) for r in schedule])  # [R]
    req = np.asarray(request_id)[rows].astype(np.int64)
    pos = np.asarray(position)[rows].astype(np.int64) + 1
    # per (step, request): its longest context in the step; then per step, the sum
    order = np.lexsort((pos, req, steps))
    steps, req, pos = steps[order], req[order], pos[order]
    last = np.r_[(steps[1:] != steps[:-1]) | (req[1:] != req[:-1]), True]  # [R]
    per_step = np.bincount(steps[last], weights=pos[last], minlength=len(schedule))  # [S]
    return int(per_step.max())


@dataclass(frozen=True)
class GpuMemory:
    """A run's GPU memory plan; ``slots`` is ``None`` until :meth:`resolve` (no-cache mode)."""

    slots: int | None
    resident_bytes: int
    expert_bytes: int
    gpu_bytes: int
    strict: bool
    reserved_bytes: int = 0
    kv_bytes: int = 0
    activation_bytes: int = 0

    @classmethod
    def plan(cls, cache: dict[str, Any], spec: ModelSpec, hardware: HardwareProfile,
             system: SystemProfile | None = None) -> GpuMemory:
        """Validate the ``cache`` group and size the cache (see the module docstring)."""
        unknown = sorted(set(cache) - CACHE_KEYS)
        if unknown:
            raise ConfigError(f"unknown cache key(s): {', '.join(unknown)}")
        resident = spec.resident_non_expert_bytes + spec.shared_expert_bytes * spec.num_moe_layers
        reserved = int((system.reserved_gpu_gib if system is not None else 0.0) * 1024**3)
        strict = bool(cache.get("strict_memory", False))
        slots = cache.get("slots")
        per_layer = cache.get("slots_per_layer")
        budget = cache.get("gpu_memory_gb")
        if slots is not None:
            if isinstance(slots, bool) or not isinstance(slots, int) or slots < 0:
                raise ConfigError(f"cache.slots must be an integer >= 0, got {slots!r}")
            slots = slots or None  # 0: resolved against the schedule
        elif per_layer is not None:
            if isinstance(per_layer, bool) or not isinstance(per_layer, int) or per_layer < 1:
                raise ConfigError(f"cache.slots_per_layer must be a positive integer, "
                                  f"got {per_layer!r}")
            if per_layer > spec.num_experts:
                raise ConfigError(f"cache.slots_per_layer={per_layer} exceeds {spec.name}'s "
                                  f"{spec.num_experts} experts per layer")
            slots = per_layer * spec.num_moe_layers
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
        memory = cls(slots, resident, spec.expert_bytes, hardware.gpu_mem_bytes, strict,
                     reserved)
        if slots is not None:
            memory._check_fit(hardware.name)
        return memory

    def resolve(self, spec: ModelSpec, largest_step_tokens: int, peak_context_tokens: int = 0,
                hardware: str = "the GPU") -> GpuMemory:
        """The plan with its slots fixed (no-cache mode: one layer's experts at most) and the
        run's KV cache (``peak_context_tokens`` alive at once) and activations (the largest
        step) counted; refused when strict and it does not fit."""
        slots = self.slots
        if slots is None:
            slots = min(spec.num_experts, spec.top_k * max(1, largest_step_tokens))
        memory = dataclasses.replace(
            self, slots=slots, kv_bytes=kv_cache_bytes(spec, peak_context_tokens),
            activation_bytes=activation_bytes(spec, max(1, largest_step_tokens)))
        memory._check_fit(hardware)
        return memory

    @property
    def needed_bytes(self) -> int:
        """Resident weights, the cache, the KV cache, activations and the runtime's reserve."""
        return (self.resident_bytes + (self.slots or 0) * self.expert_bytes + self.kv_bytes
                + self.activation_bytes + self.reserved_bytes)

    @property
    def fits(self) -> bool:
        """Whether :attr:`needed_bytes` fit in the GPU's memory."""
        return self.needed_bytes <= self.gpu_bytes

    def _check_fit(self, hardware: str) -> None:
        if self.strict and not self.fits:
            parts = (f"{self.resident_bytes / 1e9:.1f} GB of weights, "
                     f"{(self.slots or 0) * self.expert_bytes / 1e9:.1f} GB of expert cache, "
                     f"{self.kv_bytes / 1e9:.1f} GB of KV cache, "
                     f"{self.activation_bytes / 1e9:.2f} GB of activations and "
                     f"{self.reserved_bytes / 1e9:.1f} GB reserved by the runtime")
            raise ConfigError(f"{parts} do not fit in {hardware}'s "
                              f"{self.gpu_bytes / 1e9:.1f} GB (cache.strict_memory is set)")

    def summary(self) -> dict[str, Any]:
        """The summary keys of the plan (``capacity_slots`` ...)."""
        return {"capacity_slots": self.slots, "cache_bytes": (self.slots or 0) * self.expert_bytes,
                "resident_bytes": self.resident_bytes, "kv_cache_bytes": self.kv_bytes,
                "activation_bytes": self.activation_bytes,
                "reserved_bytes": self.reserved_bytes,
                "gpu_memory_needed_gb": self.needed_bytes / 1e9,
                "gpu_memory_gb": self.gpu_bytes / 1e9, "fits_gpu_memory": self.fits}


def _check_slots(slots: int, spec: ModelSpec) -> None:
    if slots < spec.top_k:
        raise ConfigError(f"a cache of {slots} slots is smaller than one layer's top-k "
                          f"({spec.top_k}) of {spec.name}")
    if slots > spec.num_expert_keys:
        raise ConfigError(f"a cache of {slots} slots exceeds {spec.name}'s "
                          f"{spec.num_expert_keys} routed experts")
