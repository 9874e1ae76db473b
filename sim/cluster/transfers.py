"""Replica weight copies over NVLink (InfiniBand across nodes) as SimPy processes.

Each rank has one ingress link (a SimPy resource of capacity 1): copies into a rank queue and
never overlap, so a link never carries more than its bandwidth. A copy of expert ``e`` to rank
``dst`` comes from ``e``'s home rank and takes ``latency + expert_bytes / bandwidth``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy
from moe_offload_lab.sim.cluster.config import ClusterSpec


class ReplicaLinks:
    """Per-rank ingress links and the record of every copy."""

    COLUMNS = ("step", "layer", "expert", "src", "dst", "bytes", "start_s", "end_s", "issued_s")

    def __init__(self, env: simpy.Environment, cluster: ClusterSpec, expert_bytes: int) -> None:
        self.env = env
        self.cluster = cluster
        self.expert_bytes = expert_bytes
        self.links = [simpy.Resource(env, capacity=1) for _ in range(cluster.ranks)]
        self.records: list[tuple[Any, ...]] = []

    def copy(self, step: int, layer: int, expert: int, src: int, dst: int) -> simpy.Process:
        """Start a copy; the returned process fires (value: its end time) when the weights are
        on ``dst``."""
        return self.env.process(self._copy(step, layer, expert, src, dst))

    def _copy(self, step: int, layer: int, expert: int, src: int,
              dst: int) -> Generator[simpy.Event, Any, float]:
        issued = self.env.now
        with self.links[dst].request() as request:
            yield request
            start = self.env.now
            duration = (self.cluster.link_latency_s(src, dst)
                        + self.expert_bytes / self.cluster.link_bytes_per_s(src, dst))
            yield self.env.timeout(duration)
            self.records.append((step, layer, expert, src, dst, self.expert_bytes, start,
                                 self.env.now, issued))
        return float(self.env.now)
