"""Cluster configs (``conf/cluster/<name>.yaml``): GPUs, nodes, NVLink and InfiniBand figures."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_offload_lab.sim.hardware import HardwareProfile, load_hardware
from moe_offload_lab.traces.catalog import available, check_fields, load_named_or_path
from moe_offload_lab.traces.errors import ConfigError


@dataclass(frozen=True)
class ClusterSpec:
    """N GPUs in nodes of ``ranks_per_node``; GB/s are 1e9 bytes per second.

    ``redundant_slots`` (R) is the number of extra expert slots per rank and MoE layer that
    balance policies may fill with replicas; ``activation_bytes`` the bytes of one hidden value
    sent by dispatch and combine.
    """

    name: str
    gpu: str
    ranks: int
    ranks_per_node: int
    nvlink_gb_per_s: float
    nvlink_latency_s: float
    ib_gb_per_s: float
    ib_latency_s: float
    redundant_slots: int = 0
    activation_bytes: float = 2.0

    def __post_init__(self) -> None:
        where = f"cluster {self.name!r}"
        for name in ("ranks", "ranks_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}")
        value = self.redundant_slots
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: redundant_slots must be a non-negative integer, "
                              f"got {value!r}")
        if self.ranks % self.ranks_per_node != 0:
            raise ConfigError(f"{where}: ranks={self.ranks} is not a multiple of "
                              f"ranks_per_node={self.ranks_per_node}")
        for name in ("nvlink_gb_per_s", "ib_gb_per_s", "activation_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{where}: {name} must be a positive number, got {value!r}")
        for name in ("nvlink_latency_s", "ib_latency_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{where}: {name} must not be negative, got {value!r}")
        if not isinstance(self.gpu, str) or not self.gpu:
            raise ConfigError(f"{where}: gpu must name a profile from conf/hardware")

    @property
    def nodes(self) -> int:
        """Number of nodes."""
        return self.ranks // self.ranks_per_node

    def node_of(self, rank: int) -> int:
        """The node a rank sits in."""
        return rank // self.ranks_per_node

    def link_bytes_per_s(self, src: int, dst: int) -> float:
        """Bandwidth between two ranks: NVLink inside a node, InfiniBand across nodes."""
        same = self.node_of(src) == self.node_of(dst)
        return (self.nvlink_gb_per_s if same else self.ib_gb_per_s) * 1e9

    def link_latency_s(self, src: int, dst: int) -> float:
        """Per-message latency between two ranks."""
        return self.nvlink_latency_s if self.node_of(src) == self.node_of(dst) \
            else self.ib_latency_s

    def hardware(self) -> HardwareProfile:
        """The GPU profile (``conf/hardware/<gpu>.yaml``)."""
        return load_hardware(self.gpu)

    def with_overrides(self, **changes: Any) -> ClusterSpec:
        """A copy with some fields replaced (validated again)."""
        check_fields(type(self), changes, f"cluster {self.name!r}", required=())
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "cluster") -> ClusterSpec:
        """Build from a mapping, rejecting unknown or missing fields with one line."""
        check_fields(cls, data, where)
        return cls(**dict(data))


def available_clusters() -> list[str]:
    """Names of the bundled cluster configs."""
    return available("cluster")


def load_cluster(config: str | Path | Mapping[str, Any]) -> ClusterSpec:
    """A cluster by name (``conf/cluster/<name>.yaml``), YAML path, or mapping.

    A mapping with ``base: <name>`` starts from that config and overrides its fields.
    """
    if isinstance(config, Mapping):
        data = dict(config)
        base = data.pop("base", None)
        if base is not None:
            data = {**load_cluster(base).__dict__, **data}
        data.setdefault("name", "custom")
        return ClusterSpec.from_dict(data, f"cluster {data['name']!r}")
    if not isinstance(config, (str, Path)):
        raise ConfigError(f"cluster must be a name or a mapping, got {type(config).__name__}")
    data, where = load_named_or_path("cluster", config)
    return ClusterSpec.from_dict(data, where)
