"""The host memory tier: host DRAM as an LRU cache of experts over NVMe.

Every routed expert lives on NVMe; host DRAM holds as many as fit (``capacity_experts``), the
first ones in layer-major order at the start (loaded at start-up, free of charge). A copy to the
GPU of an expert that is in DRAM runs at the link's bandwidth; one that is not is read from NVMe
through a pinned staging buffer, pipelined, so it runs at ``min(link, NVMe)`` bandwidth, and the
expert then enters DRAM in place of the least recently copied one. The tier is inclusive: an
expert cached on the GPU keeps its host copy. When every expert fits in DRAM the engine builds no
tier at all. NVMe read latency (about 0.1 ms) is not modelled.
"""

from __future__ import annotations

from collections import OrderedDict


class HostTier:
    """Which experts are in host DRAM; picks each copy's source bandwidth."""

    def __init__(self, capacity_experts: int, num_keys: int, link_bytes_per_s: float,
                 nvme_bytes_per_s: float) -> None:
        self.capacity_experts = max(0, min(int(capacity_experts), num_keys))
        self.link_bytes_per_s = link_bytes_per_s
        self.nvme_bytes_per_s = min(nvme_bytes_per_s, link_bytes_per_s)
        self._dram: OrderedDict[int, None] = OrderedDict.fromkeys(range(self.capacity_experts))
        self.nvme_reads = 0

    def source_bytes_per_s(self, key: int) -> float:
        """Bandwidth of the copy of ``key`` about to start; updates the DRAM recency order."""
        dram = self._dram
        if key in dram:
            dram.move_to_end(key)
            return self.link_bytes_per_s
        self.nvme_reads += 1
        if self.capacity_experts:
            if len(dram) >= self.capacity_experts:
                dram.popitem(last=False)
            dram[key] = None
        return self.nvme_bytes_per_s

    def __contains__(self, key: int) -> bool:
        return key in self._dram
