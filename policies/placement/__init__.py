"""CPU/GPU placement of missing experts: always fetch, or Fiddler's cost rule.

Each module registers its classes in :data:`policies.registry.PLACEMENTS`.
"""

from moe_offload_lab.policies.placement.base import PlacementRule, register

__all__ = ["PlacementRule", "register"]
