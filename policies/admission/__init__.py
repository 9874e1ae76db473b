"""Admission control: whether a demand-fetched expert may take a cache slot.

Each module registers its classes in :data:`policies.registry.ADMISSIONS`.
"""

from moe_offload_lab.policies.admission.base import Admission, register

__all__ = ["Admission", "register"]
