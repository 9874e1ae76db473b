"""Prefetch planners: on-demand only, next-layer top-n, lookahead-h with a byte budget, and a
cost-aware cross-layer planner. Each module registers its classes in
:data:`policies.registry.PLANNERS`."""

from moe_offload_lab.policies.planners.base import Planner, register

__all__ = ["Planner", "register"]
