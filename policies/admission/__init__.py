"""Admission control: whether a demand-fetched expert may take a cache slot.

Each module registers its classes in :data:`policies.registry.ADMISSIONS`.
"""

from policies.admission.base import Admission, register

__all__ = ["Admission", "register"]
