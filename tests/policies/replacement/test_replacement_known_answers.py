"""Hit ratios of LRU, LFU, FIFO and Belady on hand-worked reference strings.

One MoE layer, top-1, batch 1: every token is one access, so the classic paging examples apply.
"""

from __future__ import annotations

import pytest
from moe_offload_lab.policies import build_policy, load_policy
from moe_offload_lab.policies.evaluation import evaluate
from policy_testing import sequence_trace

# Silberschatz et al.'s reference string with 3 frames: FIFO 15 faults, LRU 12, OPT 9.
TEXTBOOK = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]


def _hits(policy_name: str, sequence: list[int], slots: int, **replacement: object) -> int:
    trace = sequence_trace(sequence)
    if replacement:
        policy = build_policy({"name": policy_name, "replacement": {"name": policy_name,
                                                                    **replacement}})
    else:
        policy = load_policy(policy_name)
    return evaluate(trace, policy, slots).cache.hits


@pytest.mark.parametrize("name, faults", [("fifo", 15), ("lru", 12), ("belady", 9)])
def test_textbook_string(name: str, faults: int) -> None:
    bypass = {"bypass": False} if name == "belady" else {}
    assert _hits(name, TEXTBOOK, 3, **bypass) == len(TEXTBOOK) - faults


def test_belady_with_bypass_is_at_least_min() -> None:
    assert _hits("belady", TEXTBOOK, 3) >= len(TEXTBOOK) - 9


def test_lru_hand_worked() -> None:
    # slots 2: A B A C B A -> miss miss hit miss(evict B) miss(evict A) miss(evict C): 1 hit
    assert _hits("lru", [0, 1, 0, 2, 1, 0], 2) == 1
    # slots 2: A B A C A B -> A hit at t2, C evicts B, A hit, B evicts C: 2 hits
    assert _hits("lru", [0, 1, 0, 2, 0, 1], 2) == 2


def test_lfu_hand_worked() -> None:
    # 3 slots, whole-run counts; ties go to the key longest at its count.
    # t1 0 m | t2 1 m | t3 2 m | t4 0 h (0:2) | t5 3 m, evict 1 (count 1, oldest)
    # t6 1 m (1:2), evict 2 | t7 0 h (0:3) | t8 2 m (2:2), evict 3 (count 1)
    # t9 3 m (3:2), evict 1 (count 2 since t6, before 2 at t8) | t10 3 h (3:3)
    # t11 1 m (1:3), evict 2 (count 2): hits at t4, t7, t10.
    sequence = [0, 1, 2, 0, 3, 1, 0, 2, 3, 3, 1]
    assert _hits("lfu", sequence, 3) == 3
    # LFU keeps the frequent expert where LRU drops it: 0 is used often, then a scan.
    scan = [0, 0, 0, 1, 2, 0, 3, 4, 0]
    assert _hits("lfu", scan, 2) == 4  # t2, t3, t6, t9
    assert _hits("lru", scan, 2) == 2  # t2, t3: the scan at t5 evicts 0


def test_lifo_keeps_first_residents() -> None:
    # 2 slots: 0 stays forever, each newcomer evicts the previous newcomer: hits at t5, t8.
    assert _hits("lifo", [0, 1, 2, 3, 0, 1, 4, 0], 2) == 2


def test_per_layer_lru_partitions() -> None:
    # two layers, the same expert at both; 2 slots per layer. Global LRU with 2 slots thrashes
    # across layers, per-layer LRU keeps each layer's own working set.
    trace = sequence_trace([0, 1, 0, 1, 0, 1], num_layers=2)
    per_layer = evaluate(trace, load_policy("lru-per-layer"), 4).cache
    assert per_layer.hits == 8  # all but the first two tokens at both layers
    glob = evaluate(trace, load_policy("lru"), 2).cache
    assert glob.hits == 0
