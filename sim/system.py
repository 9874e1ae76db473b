"""Implementation profiles (``conf/system/<name>.yaml``): what a runtime adds to the hardware.

A hardware profile says what the GPU, its link and its host can do; an implementation profile
says what a particular runtime (Hugging Face eager with accelerate offload, mixtral-offloading's
HQQ runtime, a MoE-Infinity-like engine, a CUDA-graph engine...) spends around that: per-layer
and per-expert host time (Python, dispatch, kernel launches), GPU-side fixed costs,
dequantization of quantized weights, synchronisation per copy, whether its host memory is
pinned, and how it overlaps copies with compute. Real runtimes spend milliseconds per layer
there, and that time decides whether a prefetch can hide a copy (:mod:`sim.compute` turns the
figures into times; :mod:`sim.engine` applies the overlap rules).

Host-side figures are seconds and do not depend on the GPU. GPU-side figures
(``layer_overhead_s``, ``dequant_gb_per_s``) were measured or fitted on ``reference_gpu``
(a hardware profile name) and scale with the simulated GPU's memory bandwidth: a kernel that
takes 1 ms on an A100 (2039 GB/s) takes 6.4 ms on a T4 (320 GB/s).

Every figure is required in a YAML file (a missing or negative one is a one-line
:class:`~traces.errors.ConfigError`), and ``provenance`` must say where the figures come from:
measured, fitted (on what, by which command) or assumed. :meth:`SystemProfile.ideal` is the pure
roofline with no implementation cost at all (what the simulator used to assume; an upper bound on
speed), used when no profile is given.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.catalog import available, check_fields, load_named_or_path, load_yaml
from moe_offload_lab.traces.errors import ConfigError

_SECONDS = ("host_layer_s", "layer_overhead_s", "kernel_launch_s", "expert_dispatch_s",
            "copy_sync_s")
_COUNTS = ("kernels_per_layer", "kernels_per_expert", "cpu_threads_per_expert")
_FLAGS = ("pinned_memory", "overlap_copies", "compute_while_copying", "batched_copies",
          "writeback_evicted")


@dataclass(frozen=True)
class SystemProfile:
    """One runtime's implementation costs and overlap rules (see the module docstring).

    Non-expert work of one MoE layer (attention, norms, router, shared experts):

    - ``host_layer_s``: host time (Python, framework bookkeeping) per MoE layer, any GPU;
    - ``kernels_per_layer``: kernel launches of that work; each costs ``kernel_launch_s`` on the
      host and at least the hardware's ``kernel_launch_s`` on the GPU;
    - ``layer_overhead_s``: GPU-side fixed time per MoE layer on ``reference_gpu`` (small
      kernels' execution beyond the roofline: norms, rotary, residuals), scaled by bandwidth.

    Routed experts:

    - ``expert_dispatch_s``: host time per routed expert (gathering its tokens, index syncs);
    - ``kernels_per_expert``: its kernel launches;
    - ``dequant_gb_per_s``: throughput of the runtime's dequantizing kernels, in GB/s of
      quantized weights on ``reference_gpu``, for weights stored below 2 bytes per parameter
      (experts and non-expert weights alike): the time beyond the roofline that unpacking and
      scaling them costs; ``0`` when the kernels read quantized weights at full speed (fused).

    A layer's non-expert work and each expert take ``max(host, GPU)``: the host launches
    asynchronously and the runtime syncs at least once per layer and per expert.

    Copies and overlap:

    - ``copy_sync_s``: per copy a layer has to wait for, the time from its completion to the
      compute resuming (event wait, host wake-up, bookkeeping);
    - ``pinned_memory``: pinned host buffers; pageable ones run at ``pageable_link_fraction``
      of the link's bandwidth and block the host, so they never overlap compute;
    - ``overlap_copies``: copies run while the GPU computes (a separate copy stream); false: a
      layer waits for every copy in flight before its experts run (one stream for everything);
    - ``compute_while_copying``: the layer's resident experts run while its missing ones are
      still copying, each missing one as soon as its copy lands (ProMoE's reordering,
      mixtral-offloading's ``unordered`` loading); needs ``overlap_copies``;
    - ``batched_copies``: a layer's demand copies go as one transfer (one per-copy latency, all
      landing together);
    - ``writeback_evicted``: each copy into a slot freed by an eviction also moves the evicted
      expert back to host memory on the same stream, right after it (the public
      mixtral-offloading repository's swap-based cache keeps a fixed pool of pinned host buffers
      that rotate; the bundled profile, modelling the paper's runtime, does not): the link is busy
      twice as long for it, and the layer waits for both;
    - ``cpu_threads_per_expert``: host cores one CPU-placed expert uses (0: all of them, one
      expert at a time); the host's ``cpu_cores`` then run ``cores // threads`` experts at once,
      sharing its DRAM bandwidth and FLOPs;
    - ``staging_buffers`` (optional, default 0): how many layers' worth of expert buffers the
      runtime copies into, used in rotation (layer ``m`` lands in buffer ``m mod B``), so a
      prefetch copy for layer ``m`` may start only once layer ``m - B`` has finished its experts
      (its buffer is free). 1 is a single buffer: the next layer's prefetch waits for the
      current layer to finish computing; 2 is PreScope's AsyncIO double buffering: the next
      layer's prefetch runs while the current layer computes from the other buffer, the one
      after waits for the current layer. 0 (the default) does not model buffers: a copy goes
      into its cache slot whenever the link is free (as if the buffers were unbounded). Only
      prefetches are gated (a demand copy is for the current layer, whose buffer is free); only
      runtimes whose copies overlap compute (``overlaps``) are affected.

    Memory: ``reserved_gpu_gib``, what the runtime holds on the GPU beyond weights, KV cache and
    activations (CUDA context, allocator slack, workspaces).
    """

    name: str
    description: str
    provenance: str
    reference_gpu: str
    host_layer_s: float
    kernels_per_layer: int
    kernel_launch_s: float
    layer_overhead_s: float
    expert_dispatch_s: float
    kernels_per_expert: int
    dequant_gb_per_s: float
    copy_sync_s: float
    pinned_memory: bool
    overlap_copies: bool
    compute_while_copying: bool
    batched_copies: bool
    writeback_evicted: bool
    cpu_threads_per_expert: int
    reserved_gpu_gib: float
    pageable_link_fraction: float = 1.0 / 3.0  # A100: 12.9 ms pageable vs 4.3 ms pinned
    staging_buffers: int = 0  # 0: not modelled; 2: double buffering (PreScope's AsyncIO)

    def __post_init__(self) -> None:
        where = f"system {self.name!r}"
        for field in ("name", "description", "provenance", "reference_gpu"):
            if not isinstance(getattr(self, field), str):
                raise ConfigError(f"{where}: {field} must be a string")
        for field in (*_SECONDS, "dequant_gb_per_s", "reserved_gpu_gib"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{where}: {field} must be a number >= 0, got {value!r}")
        for field in (*_COUNTS, "staging_buffers"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{where}: {field} must be an integer >= 0, got {value!r}")
        for field in _FLAGS:
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"{where}: {field} must be true or false, "
                                  f"got {getattr(self, field)!r}")
        fraction = self.pageable_link_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not 0 < fraction <= 1:
            raise ConfigError(f"{where}: pageable_link_fraction must be in (0, 1], "
                              f"got {fraction!r}")
        if self.compute_while_copying and not self.overlap_copies:
            raise ConfigError(f"{where}: compute_while_copying needs overlap_copies (without "
                              f"overlap every copy finishes before any expert runs)")
        if self.gpu_bound_costs and not self.reference_gpu:
            raise ConfigError(f"{where}: reference_gpu must name the hardware profile its "
                              f"GPU-side figures were measured on")

    # ---- derived --------------------------------------------------------------------------------
    @property
    def gpu_bound_costs(self) -> bool:
        """Whether any figure scales with the GPU (and needs ``reference_gpu``)."""
        return self.layer_overhead_s > 0 or self.dequant_gb_per_s > 0

    @property
    def overlaps(self) -> bool:
        """Copies overlap compute: a separate copy stream from pinned memory."""
        return self.overlap_copies and self.pinned_memory

    def link_fraction(self) -> float:
        """Fraction of the link's bandwidth the runtime's copies reach."""
        return 1.0 if self.pinned_memory else self.pageable_link_fraction

    def gpu_scale(self, hbm_gb_per_s: float) -> float:
        """How much slower GPU-bound costs run on a GPU of ``hbm_gb_per_s`` than on
        ``reference_gpu`` (1 when the profile has none)."""
        if not self.gpu_bound_costs:
            return 1.0
        return _reference_hbm_gb_per_s(self.reference_gpu) / hbm_gb_per_s

    def cpu_lanes(self, cpu_cores: int) -> int:
        """CPU-placed experts the host runs at once."""
        threads = self.cpu_threads_per_expert or cpu_cores
        return max(1, cpu_cores // max(1, threads))

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def ideal(cls) -> SystemProfile:
        """No implementation cost: the hardware's roofline alone, copies overlapping compute,
        a layer's experts after all its copies (the simulator's model before profiles)."""
        return cls(name="ideal", description="pure roofline, no implementation overheads",
                   provenance="none: an upper bound on speed", reference_gpu="",
                   host_layer_s=0.0, kernels_per_layer=1, kernel_launch_s=0.0,
                   layer_overhead_s=0.0, expert_dispatch_s=0.0, kernels_per_expert=1,
                   dequant_gb_per_s=0.0, copy_sync_s=0.0, pinned_memory=True,
                   overlap_copies=True, compute_while_copying=False, batched_copies=False,
                   writeback_evicted=False, cpu_threads_per_expert=0, reserved_gpu_gib=0.0)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "system") -> SystemProfile:
        """Build from a mapping (a YAML file or a Hydra node): every figure is required,
        unknown fields are refused, one line each."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping")
        check_fields(cls, data, where)
        profile = cls(**data)
        if profile.gpu_bound_costs:
            profile.gpu_scale(1.0)  # the reference GPU must exist
        return profile

    def with_overrides(self, **changes: Any) -> SystemProfile:
        """A copy with some figures replaced (validated again)."""
        check_fields(type(self), changes, f"system {self.name!r}", required=())
        return dataclasses.replace(self, **changes)


@cache
def _reference_hbm_gb_per_s(name: str) -> float:
    data = load_yaml("hardware", name) if name else {}
    value = data.get("hbm_gb_per_s")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"reference_gpu {name!r}: no hbm_gb_per_s in its hardware profile")
    return float(value)


def with_policy_runtime(system: SystemProfile | None, policy: Any) -> SystemProfile | None:
    """``system`` (None: :meth:`SystemProfile.ideal`) with the fields the policy's own runtime
    sets (``policy.runtime``, e.g. PreScope's ``staging_buffers: 2``); ``system`` unchanged when
    the policy sets none. An unknown field or a bad value is one ConfigError line."""
    runtime = getattr(policy, "runtime", None)
    if not runtime:
        return system
    base = system if system is not None else SystemProfile.ideal()
    try:
        return base.with_overrides(**dict(runtime))
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"policy {getattr(policy, 'name', '?')!r}: runtime: {exc}") from None


def load_system(name_or_path: str | Path) -> SystemProfile:
    """A bundled implementation profile by name (``conf/system/<name>.yaml``) or a YAML path."""
    data, where = load_named_or_path("system", name_or_path)
    return SystemProfile.from_dict(data, where)


def available_systems() -> list[str]:
    """Names of the bundled implementation profiles."""
    return available("system")
