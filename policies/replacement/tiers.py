"""The policy side of the tiers below the GPU: what a rule keeps in, and promotes to, host DRAM.

Prophet's hierarchy has three tiers: **L1** the GPU's expert slots (the :class:`CacheView` every
engine already has), **L2** host DRAM (holds as many experts as fit; inclusive of L1: an expert
on the GPU keeps its host copy) and **L3** NVMe (holds every expert). At every tier the policy
decides two things, both from the predictor's confidence:

- **keep**: which residents leave the tier when it must make room (L1: ``victims``; L2:
  :meth:`TieredRule.host_victims`: they drop to NVMe-only);
- **promote**: which experts move up ahead of need (L1: the prefetch plan, gated by the rule;
  L2: :meth:`TieredRule.host_promotions`, NVMe-to-DRAM reads issued while the link to the GPU
  is busy, so a later GPU copy runs at DRAM speed).

A rule that implements :meth:`tier_densities` (the value of keeping each key: higher keeps)
gets both L2 decisions, and one that implements :meth:`host_candidates` (the keys it expects
soon) gets promotions. The simulator's host tier (``sim/host.py``) calls them when the model does
not fit host DRAM and the policy's replacement rule is a TieredRule
(``Policy.tiered_rule``); the call order is in ``policies/README.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence


class TieredRule(ABC):
    """A replacement rule that also decides the host-DRAM tier (see module docstring)."""

    @abstractmethod
    def tier_densities(self, keys: Sequence[int]) -> list[float]:
        """The value of keeping each of ``keys`` in any tier (higher keeps, lower leaves first).

        Called by the other methods here, at a layer boundary, after the rule saw the layer's
        access and the predictor's latest prediction. Nothing is decided."""

    def host_candidates(self) -> list[int]:
        """Keys the rule expects to be needed soon (its predictor's current prediction), most
        likely first: what :meth:`host_promotions` may promote.

        Called by an engine once per layer, after the GPU prefetch plan. The default: none (no
        promotions; DRAM then only keeps by :meth:`host_victims`)."""
        return []

    def host_victims(self, host_resident: Collection[int], need: int,
                     protect: Collection[int], out: list[int]) -> None:
        """Append up to ``need`` keys to leave host DRAM (to NVMe only), least valuable first.

        Called by an engine whose DRAM tier is full when an expert must enter it (a demand or
        prefetch copy that reads from NVMe, or a promotion). ``host_resident``: the keys in DRAM;
        ``protect``: keys that must stay (copies in flight from DRAM to the GPU). May return
        fewer than asked when nothing else may leave (the engine then streams the read).
        """
        candidates = [k for k in host_resident if k not in protect and k not in out]
        values = self.tier_densities(candidates)
        ranked = sorted(zip(values, candidates, strict=True))
        out.extend(key for _, key in ranked[:need])

    def host_promotions(self, candidates: Sequence[int], host_resident: Collection[int],
                        free: int, out: list[int]) -> None:
        """Append the ``candidates`` (keys the predictor expects, not in DRAM) worth reading
        from NVMe into DRAM now, most valuable first.

        Called by an engine once per layer after the GPU prefetch plan, when the model does not
        fit host DRAM. ``free``: empty DRAM slots. A candidate is promoted into a free slot, or
        in place of a DRAM resident of lower value (which the engine then removes with the
        ordinary eviction order of :meth:`host_victims`).
        """
        if not candidates:
            return
        wanted = sorted(zip(self.tier_densities(candidates), candidates, strict=True),
                        key=lambda item: -item[0])
        residents = list(host_resident)
        weakest = sorted(self.tier_densities(residents)) if residents else []
        displaced = 0
        for value, key in wanted:
            if key in host_resident or key in out:
                continue
            if free > 0:
                free -= 1
            elif displaced < len(weakest) and weakest[displaced] < value:
                displaced += 1
            else:
                return
            out.append(key)
