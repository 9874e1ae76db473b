"""Cache replacement rules: LRU (global and per-layer), LFU, FIFO, LIFO, MoE-Infinity's score,
Prophet's confidence-aware rule and Belady's MIN (an oracle). Each module registers its classes in
:data:`policies.registry.REPLACEMENTS`."""

from moe_offload_lab.policies.replacement.base import ReplacementRule, register

__all__ = ["ReplacementRule", "register"]
