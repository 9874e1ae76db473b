"""The host memory tier: host DRAM as a cache of experts over NVMe.

Every routed expert lives on NVMe; host DRAM holds as many as fit (``capacity_experts``), the
first ones in layer-major order at the start (loaded at start-up, free of charge). A copy to the
GPU of an expert that is in DRAM runs at the link's bandwidth; one that is not is read from NVMe
through a pinned staging buffer, pipelined, so it runs at ``min(link, NVMe)`` bandwidth, and the
expert then enters DRAM. The tier is inclusive: an expert cached on the GPU keeps its host copy.
When every expert fits in DRAM the engine builds no tier at all. NVMe read latency (about
0.1 ms) is not modelled.

Who decides what DRAM keeps and what enters it ahead of need:

- no rule (the default): DRAM is an LRU of the experts copied to the GPU, and NVMe is read only
  on demand (when a GPU copy needs an expert DRAM lacks);
- a :class:`~policies.replacement.tiers.TieredRule` (Prophet's confidence-guided hierarchy,
  :meth:`HostTier.bind_rule`): when an expert must enter a full DRAM, the rule's
  :meth:`~policies.replacement.tiers.TieredRule.host_victims` choose who leaves (lowest hit
  density first, not least recently used); and once per MoE layer the engine offers the rule's
  predicted keys (:meth:`~policies.replacement.tiers.TieredRule.host_candidates`) to
  :meth:`~policies.replacement.tiers.TieredRule.host_promotions`, whose choices are read from
  NVMe into DRAM ahead of need (:meth:`HostTier.promote`).

Promotions run on the NVMe device, one expert at a time at NVMe bandwidth, from when the engine
asks (the layer's decision) or when the device is free; a promoted expert takes its DRAM place at
once (reserved) and serves GPU copies at link speed from when its read completes (a copy that
starts earlier waits for the read, then moves at link speed: its bandwidth is the expert's bytes
over that whole time, and never below NVMe's). An NVMe read
for a GPU copy keeps the device busy as long (so promotions queue behind demand reads), but is
not delayed by promotions (its copy already runs at NVMe speed).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any


class HostTier:
    """Which experts are in host DRAM; picks each copy's source bandwidth (module docstring)."""

    def __init__(self, capacity_experts: int, num_keys: int, link_bytes_per_s: float,
                 nvme_bytes_per_s: float, resident: Iterable[int] | None = None) -> None:
        self.capacity_experts = max(0, min(int(capacity_experts), num_keys))
        self.link_bytes_per_s = link_bytes_per_s
        self.nvme_bytes_per_s = min(nvme_bytes_per_s, link_bytes_per_s)
        # in DRAM at start (least recently used first): the first keys, or ``resident``
        first = range(self.capacity_experts) if resident is None else \
            list(resident)[:self.capacity_experts]
        self._dram: OrderedDict[int, None] = OrderedDict.fromkeys(first)
        self.nvme_reads = 0  # GPU copies read from NVMe
        self.promotions = 0  # NVMe-to-DRAM reads ahead of need (a rule's)
        self.rule: Any = None  # a TieredRule, or None (LRU, on demand)
        self.expert_bytes = 0
        self._loading: dict[int, float] = {}  # promoted key -> when its read lands in DRAM
        self._nvme_free_s = 0.0  # when the NVMe device finishes its queued reads
        self._victims: list[int] = []

    def bind_rule(self, rule: Any, expert_bytes: int) -> None:
        """Let ``rule`` (a TieredRule) decide what DRAM keeps and promotes; experts of
        ``expert_bytes``."""
        self.rule = rule
        self.expert_bytes = int(expert_bytes)

    def source_bytes_per_s(self, key: int, at_s: float = 0.0) -> float:
        """Bandwidth of the copy of ``key`` about to start at ``at_s``; updates DRAM (recency,
        or the expert entering it after an NVMe read)."""
        if self._loading:
            self._land(at_s)
        dram = self._dram
        if key in dram:
            dram.move_to_end(key)
            return self.link_bytes_per_s
        landing = self._loading.get(key)
        if landing is not None:  # its promotion is still reading: wait for it, then DRAM speed
            seconds = landing - at_s + self.expert_bytes / self.link_bytes_per_s
            return max(self.nvme_bytes_per_s, self.expert_bytes / seconds)
        self.nvme_reads += 1
        if self.rule is not None:
            self._occupy_nvme(at_s)
        if self.capacity_experts:
            if self._room(1, key):
                dram[key] = None
        return self.nvme_bytes_per_s

    def promote(self, at_s: float, gpu: Any = None) -> int:
        """Once per MoE layer (after the GPU prefetch plan), at the layer's decision time: read
        the rule's chosen candidates from NVMe into DRAM. Candidates are the rule's predicted
        keys that are neither in DRAM nor (``gpu``: the GPU cache's view) resident or copying on
        the GPU. Returns how many reads were started."""
        rule = self.rule
        if rule is None or not self.capacity_experts:
            return 0
        if self._loading:
            self._land(at_s)
        dram, loading = self._dram, self._loading
        candidates = [k for k in rule.host_candidates() if k not in dram and k not in loading]
        if gpu is not None and candidates:
            resident, in_flight = gpu.resident, gpu.in_flight
            candidates = [k for k in candidates if k not in resident and k not in in_flight]
        if not candidates:
            return 0
        free = self.capacity_experts - len(dram) - len(loading)
        chosen: list[int] = []
        rule.host_promotions(candidates, dram.keys(), max(free, 0), chosen)
        started = 0
        for key in chosen:
            if not self._room(1, key):
                break
            start = max(at_s, self._nvme_free_s)
            self._nvme_free_s = start + self.expert_bytes / self.nvme_bytes_per_s
            loading[key] = self._nvme_free_s
            started += 1
        self.promotions += started
        return started

    def _room(self, need: int, incoming: int) -> bool:
        """Free ``need`` DRAM places for ``incoming`` (promotions in flight hold theirs): LRU
        order, or the rule's :meth:`host_victims`. False when nothing may leave."""
        dram = self._dram
        over = len(dram) + len(self._loading) + need - self.capacity_experts
        if over <= 0:
            return True
        if self.rule is None:
            for _ in range(min(over, len(dram))):
                dram.popitem(last=False)
        else:
            victims = self._victims
            victims.clear()
            self.rule.host_victims(dram.keys(), over, (incoming,), victims)
            for key in victims:
                del dram[key]
        return len(dram) + len(self._loading) + need <= self.capacity_experts

    def _land(self, t: float) -> None:
        """Promotions whose read completed by ``t`` are in DRAM (most recent last)."""
        done = [k for k, end in self._loading.items() if end <= t]
        for key in done:
            del self._loading[key]
            self._dram[key] = None

    def _occupy_nvme(self, at_s: float) -> None:
        """A GPU copy reads one expert from NVMe from ``at_s``: the device is busy that long."""
        if self.expert_bytes:
            start = max(at_s, self._nvme_free_s)
            self._nvme_free_s = start + self.expert_bytes / self.nvme_bytes_per_s

    def __contains__(self, key: int) -> bool:
        return key in self._dram

