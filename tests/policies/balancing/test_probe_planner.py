"""PROBE's planner: hand-worked plans, its invariants, and the compiled code against Python."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.policies.balancing.base import home_slots, round_robin_home
from moe_offload_lab.policies.balancing.planners import TOKENS, InstanceCost, plan_replicas


def _setup(experts: int, ranks: int):
    home = round_robin_home(experts, ranks)
    return home, home_slots(home, ranks, -(-experts // ranks))


def _rank_times(load, home, table, share, cost):
    ids = np.where(table >= 0, table, 0)
    amounts = np.where(table >= 0, np.asarray(load, float)[ids] * share, 0.0)
    return cost.many(amounts).sum(axis=1)


def test_one_hot_expert_is_split_at_the_balance_point() -> None:
    home, table = _setup(4, 2)  # rank 0: experts 0, 2; rank 1: experts 1, 3
    load = np.array([100.0, 10, 10, 10])  # rank 0: 110 pairs, rank 1: 20
    replicas, share = plan_replicas(load, home, table, 1, np.array([1, 1]), TOKENS)
    assert replicas.tolist() == [[-1], [0]]
    full = np.concatenate([table, replicas], axis=1)
    assert share[full == 0].tolist() == pytest.approx([0.55, 0.45])  # 55 + 10 = 45 + 20
    assert _rank_times(load, home, full, share, TOKENS).tolist() == pytest.approx([65, 65])


def test_memory_bound_experts_move_whole() -> None:
    # decode-like: an instance costs one weight read whatever its tokens, so a copy that takes
    # all of an expert's tokens (a move) relieves the hot rank; a split would not
    home, table = _setup(6, 2)  # rank 0: 0, 2, 4; rank 1: 1, 3, 5
    load = np.array([5.0, 0, 5, 0, 5, 0])
    cost = InstanceCost(mem_s=1.0, token_s=0.0)
    replicas, share = plan_replicas(load, home, table, 1, np.array([1, 1]), cost)
    full = np.concatenate([table, replicas], axis=1)
    moved = int(replicas[1, 0])
    assert moved in (0, 2, 4)
    assert share[full == moved].tolist() == [0.0, 1.0]  # home idles, the copy takes all
    times = _rank_times(load, home, full, share, cost)
    assert times.max() == pytest.approx(2 * (1 - np.exp(-5)))


def test_no_budget_no_replicas() -> None:
    home, table = _setup(8, 4)
    load = np.array([400.0, 1, 1, 1, 1, 1, 1, 1])
    replicas, share = plan_replicas(load, home, table, 2, np.zeros(4, dtype=int), TOKENS)
    assert (replicas == -1).all() and (share[:, :2][table >= 0] == 1).all()


@pytest.mark.parametrize("seed", range(6))
def test_invariants_and_the_compiled_code_matches_python(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ranks = int(rng.choice([2, 4, 8]))
    experts = ranks * int(rng.integers(2, 9))
    slots = int(rng.integers(1, 4))
    nodes = 2 if ranks >= 4 and seed % 2 else 1
    node = np.arange(ranks) // (ranks // nodes)
    home, table = _setup(experts, ranks)
    cost = InstanceCost(float(rng.uniform(0, 2)), float(rng.uniform(0.01, 1)))
    for _ in range(10):
        weights = rng.pareto(1.0, experts) + 0.05
        load = rng.multinomial(int(rng.integers(10, 2000)), weights / weights.sum()).astype(float)
        budget = rng.integers(0, slots + 1, ranks)
        fast = plan_replicas(load, home, table, slots, budget, cost, node=node)
        slow = plan_replicas(load, home, table, slots, budget, cost, node=node, compiled=False)
        assert np.array_equal(fast[0], slow[0]) and np.allclose(fast[1], slow[1], atol=0)
        replicas, share = fast
        full = np.concatenate([table, replicas], axis=1)
        assert ((replicas >= 0).sum(axis=1) <= np.minimum(budget, slots)).all()
        for r in range(ranks):  # a copy never lands where its expert already is
            row = replicas[r][replicas[r] >= 0]
            assert len(set(row.tolist())) == len(row) and (home[row] != r).all()
            assert (node[home[row]] == node[r]).all()  # nor leaves its home node
        held = full >= 0
        totals = np.bincount(full[held], weights=share[held], minlength=experts)
        assert np.allclose(totals, 1.0) and (share >= 0).all()
        before = cost.many(load).reshape(-1, ranks).sum(axis=0) if experts % ranks == 0 else None
        after = _rank_times(load, home, full, share, cost)
        assert before is None or after.max() <= before.max() + 1e-12
