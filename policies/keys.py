"""Expert keys: one int per (MoE layer, routed expert) pair.

Every policy and both engines name an expert by ``key = layer * num_experts + expert``, where
``layer`` is the dense MoE-layer index ``0 .. L-1`` (the trace's layer axis, not the transformer
block number) and ``expert`` is the routed expert id ``0 .. E-1``. Keys are plain Python ints in
``[0, L * E)``; they sort by layer first, so the keys of one layer are a contiguous range.
"""

from __future__ import annotations

import numpy as np


def make_key(layer: int, expert: int, num_experts: int) -> int:
    """The key of ``expert`` at MoE layer ``layer``."""
    return layer * num_experts + expert


def key_layer(key: int, num_experts: int) -> int:
    """The MoE layer a key belongs to."""
    return key // num_experts


def key_expert(key: int, num_experts: int) -> int:
    """The expert id within its layer."""
    return key % num_experts


def split_key(key: int, num_experts: int) -> tuple[int, int]:
    """``(layer, expert)`` of a key."""
    return divmod(key, num_experts)


def layer_keys(layer: int, experts: object, num_experts: int) -> list[int]:
    """Keys of several experts of one layer, in the given order (plain ints)."""
    base = layer * num_experts
    return [base + int(e) for e in experts]  # type: ignore[union-attr]


def keys_to_arrays(keys: object, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised split: ``(layers [n], experts [n])`` int64 arrays of a sequence of keys."""
    array = np.asarray(keys, dtype=np.int64)  # [n]
    return array // num_experts, array % num_experts


def is_valid_key(key: object, num_layers: int, num_experts: int) -> bool:
    """True for a plain int in ``[0, num_layers * num_experts)`` (bools and numpy ints excluded)."""
    return type(key) is int and 0 <= key < num_layers * num_experts
