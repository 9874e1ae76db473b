"""Hardware profiles (``conf/hardware/<name>.yaml``): the figures the simulator times with."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.catalog import available, check_fields, load_named_or_path
from moe_offload_lab.traces.errors import ConfigError

_GIB = 1024**3


@dataclass(frozen=True)
class HardwareProfile:
    """One GPU plus its host, in the units of the YAML files (GB/s are 1e9 bytes per second).

    ``measured`` holds calibrated tables from the executor (``moe-hw calibrate``); they replace
    the roofline for what they measured (:mod:`sim.measured` gives the layout).
    """

    name: str
    gpu_mem_gib: float
    gpu_tflops: float
    hbm_gb_per_s: float
    link_gb_per_s: float
    copy_latency_s: float = 6e-6
    copy_engines: int = 1
    kernel_launch_s: float = 5e-6
    cpu_cores: int = 16
    cpu_tflops: float = 1.0
    host_dram_gib: float = 64.0
    host_dram_gb_per_s: float = 90.0
    nvme_gb_per_s: float = 7.4
    measured: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        positive = ("gpu_mem_gib", "gpu_tflops", "hbm_gb_per_s", "link_gb_per_s", "cpu_tflops",
                    "host_dram_gib", "host_dram_gb_per_s", "nvme_gb_per_s", "copy_engines",
                    "cpu_cores")
        for field in positive:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"hardware {self.name!r}: {field} must be a positive number, "
                                  f"got {value!r}")
        for field in ("copy_latency_s", "kernel_launch_s"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ConfigError(f"hardware {self.name!r}: {field} must not be negative, "
                                  f"got {value!r}")
        if self.measured is not None and not isinstance(self.measured, dict):
            raise ConfigError(f"hardware {self.name!r}: measured must be a mapping or null")

    # ---- SI units -------------------------------------------------------------------------------
    @property
    def gpu_mem_bytes(self) -> int:
        """GPU memory in bytes."""
        return int(self.gpu_mem_gib * _GIB)

    @property
    def gpu_flops_per_s(self) -> float:
        """Peak bf16 dense FLOP/s."""
        return self.gpu_tflops * 1e12

    @property
    def hbm_bytes_per_s(self) -> float:
        """Device memory bandwidth in bytes/s."""
        return self.hbm_gb_per_s * 1e9

    @property
    def link_bytes_per_s(self) -> float:
        """Host-to-device link bandwidth in bytes/s."""
        return self.link_gb_per_s * 1e9

    @property
    def cpu_flops_per_s(self) -> float:
        """Host matmul throughput in FLOP/s."""
        return self.cpu_tflops * 1e12

    @property
    def host_dram_bytes_per_s(self) -> float:
        """Host DRAM bandwidth in bytes/s."""
        return self.host_dram_gb_per_s * 1e9

    def with_overrides(self, **changes: Any) -> HardwareProfile:
        """A copy with some fields replaced (validated again)."""
        check_fields(type(self), changes, f"hardware {self.name!r}", required=())
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "hardware") -> HardwareProfile:
        """Build from a mapping, rejecting unknown fields with a one-line ConfigError."""
        check_fields(cls, data, where)
        return cls(**data)


def load_hardware(name_or_path: str | Path) -> HardwareProfile:
    """A bundled profile by name (``conf/hardware/<name>.yaml``) or a YAML file by path."""
    data, where = load_named_or_path("hardware", name_or_path)
    return HardwareProfile.from_dict(data, where)


def available_hardware() -> list[str]:
    """Names of the bundled hardware profiles."""
    return available("hardware")
