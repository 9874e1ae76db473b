"""DeepSeek's EPLB, reimplemented: the README's worked example and the algorithm's invariants."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.policies.balancing.eplb_algorithm import (
    balanced_packing,
    rebalance_experts,
    replicate_experts,
)
from moe_offload_lab.traces.errors import ConfigError

# github.com/deepseek-ai/EPLB, README "Interface and Example": two layers of 12 experts, 16
# physical experts on 2 nodes of 4 GPUs, 4 expert groups (the hierarchical policy).
README_WEIGHT = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                          [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
README_PHY2LOG = np.array([[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                           [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]])


def test_readme_example_is_reproduced() -> None:
    phy2log, log2phy, logcnt = rebalance_experts(README_WEIGHT, 16, 4, 2, 8)
    assert np.array_equal(phy2log, README_PHY2LOG)
    assert np.array_equal(logcnt, np.stack([np.bincount(r, minlength=12) for r in phy2log]))
    for layer in range(2):  # log2phy inverts phy2log
        for expert in range(12):
            slots = log2phy[layer, expert]
            slots = slots[slots >= 0]
            assert len(slots) == logcnt[layer, expert]
            assert (phy2log[layer, slots] == expert).all()


def test_readme_example_keeps_groups_on_nodes() -> None:
    # 4 groups of 3 experts on 2 nodes: every physical expert of node n belongs to one of the two
    # groups packed there (what keeps group-limited routing inside a node)
    phy2log, _, _ = rebalance_experts(README_WEIGHT, 16, 4, 2, 8)
    for layer in range(2):
        groups = phy2log[layer] // 3  # [16]
        node_groups = [set(groups[:8].tolist()), set(groups[8:].tolist())]
        assert all(len(g) == 2 for g in node_groups) and not node_groups[0] & node_groups[1]


def test_global_policy_when_nodes_do_not_divide_groups() -> None:
    rng = np.random.default_rng(0)
    weight = rng.integers(1, 200, (3, 16))
    phy2log, _, logcnt = rebalance_experts(weight, 24, 3, 2, 8)  # 3 groups on 2 nodes: global
    assert phy2log.shape == (3, 24)
    assert (logcnt >= 1).all() and (logcnt.sum(1) == 24).all()
    # global replication gives redundant replicas to the experts with the highest load per copy
    for layer in range(3):
        _, _, alone = replicate_experts(weight[layer:layer + 1].astype(float), 24)
        assert np.array_equal(logcnt[layer], alone[0])


def test_packing_is_even_and_greedy() -> None:
    weight = np.array([[10.0, 9, 8, 7, 6, 5, 4, 3]])
    pack, rank = balanced_packing(weight, 2)
    assert np.bincount(pack[0], minlength=2).tolist() == [4, 4]
    loads = np.bincount(pack[0], weights=weight[0], minlength=2)
    assert abs(loads[0] - loads[1]) <= 2
    assert sorted(rank[0][pack[0] == 0].tolist()) == [0, 1, 2, 3]


def test_replication_lowers_the_heaviest_load_per_copy() -> None:
    weight = np.array([[100.0, 10, 10, 10]])
    phy2log, rank, logcnt = replicate_experts(weight, 7)
    assert logcnt[0].tolist() == [4, 1, 1, 1]
    assert sorted(rank[0][phy2log[0] == 0].tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("args", [(15, 4, 2, 8),  # physical experts not a multiple of GPUs
                                  (16, 5, 1, 8),  # hierarchical: 12 experts in 5 groups
                                  (16, 4, 4, 6)])  # hierarchical: 6 GPUs on 4 nodes
def test_uneven_shapes_are_one_line_errors(args: tuple[int, int, int, int]) -> None:
    with pytest.raises(ConfigError, match="EPLB") as info:
        rebalance_experts(README_WEIGHT, *args)
    assert "\n" not in str(info.value)
