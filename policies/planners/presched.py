"""PreScope's PreSched: a cross-layer plan over the horizon, solved exactly.

At layer ``l`` every expert the predictor expects at layers ``l + 1 .. l + h`` gets one of three
fates: **prefetch** it now (a copy on the link, in a chosen order), **load on demand** when its
layer needs it (a stall of one copy), or **compute it on the CPU** there (no copy; the stall is
the CPU's extra time over the GPU's, linear in its tokens). PreSched picks the fates and the
copy order of the whole horizon together, minimising the expected stall of the plan.

The model (the same timing as the greedy ``cost-aware`` planner, :class:`CostModel` figures):

- the link serves one copy at a time; copy ``n`` of the plan (0-based) finishes at
  ``backlog_s + (n + 1) * copy_s`` (``backlog_s``: copies already queued);
- layer ``l + d`` starts at its deadline ``T_d``: ``wait_s`` (this layer's demand copies and
  CPU overrun) plus ``d`` layers of GPU work ``layer_s`` plus the expected stall of layers
  ``l + 1 .. l + d - 1`` as if none of their candidates were prefetched (an upper bound: the
  plan decides those stalls, and a planner that ignored them would call every copy late);
- an expert with batch-level confidence ``c`` (the probability the batch needs it) and ``t``
  expected tokens (from ``c`` over the batch's i.i.d. tokens) costs, in expectation:
  prefetched at position ``n``: ``c * max(0, finish(n) - T_d) + (1 - c) * waste_s``
  (``waste_s = waste_weight * copy_s``: link time a wrong prefetch takes from later copies);
  not prefetched: ``c * miss(t)``, ``miss(t) = min(copy_s, cpu_s(t) - gpu_s(t))`` (the engine's
  placement - ``fiddler`` - then loads it or runs it on the CPU, whichever is cheaper at that
  moment; without ``consider_cpu``: ``copy_s``).

**Exact solution** (:func:`solve`): for a fixed set of prefetches of one distance, the most
confident go first (same deadline: exchange argument); and if some expert is prefetched, a more
confident one of the same distance is too (its gain is at least as large, because ``miss`` grows
with confidence through ``t``). So a plan is fixed by how many of each distance's top-ranked
candidates it takes and how the distances interleave on the link: a dynamic program over the
count vectors ``(n_1 .. n_h)``, each extended by the next candidate of one distance at the next
link position. Candidates whose cost is not below their miss cost even at the first link
position are never worth a copy and are dropped first; the program stops at the last link
position where some candidate still gains; at most ``max_candidates`` per distance enter it
(the solution is exact whenever no more pass that filter; the CPU's per-token time must exceed
the GPU's, as on every real machine, for ``miss`` to grow with confidence). The greedy planner
(``cost-aware``, :mod:`policies.planners.cost_aware`) stays as the baseline; the tests check that
PreSched's plan equals an exhaustive search on small instances and beats the greedy plan's cost
where greedy's earliest-deadline order is wrong.

What differs from the paper (the material we have describes the goal, "globally optimal plans
balancing prefetching costs and loading overhead" across layers, not the algorithm): the plan is
remade at every layer over a sliding horizon; the intermediate layers' stalls are the
no-prefetch upper bound; link and CPU contention are the cost model's, not measured.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from moe_offload_lab.policies.base import FetchPlan
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.planners.base import register
from moe_offload_lab.policies.planners.cost_aware import CostAwarePlanner
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.predictors.dedup import tokens_from_union
from moe_offload_lab.policies.registry import require

PREFETCH, DEMAND, CPU = "prefetch", "demand", "cpu"


@dataclass(frozen=True)
class Item:
    """One candidate expert: its key, distance ``d`` (1..h), confidence ``c``, and its
    expected stall per unit of need when not prefetched (``miss_s``) and whether that fallback
    is the CPU."""

    key: int
    distance: int
    confidence: float
    miss_s: float
    on_cpu: bool = False


@dataclass(frozen=True)
class Instance:
    """One planning problem: candidates, link figures, deadlines ``T_d`` (index ``d - 1``),
    the waste charge of a wrong prefetch and the most copies allowed."""

    items: tuple[Item, ...]
    copy_s: float
    backlog_s: float
    deadlines: tuple[float, ...]
    waste_s: float
    max_keys: int

    def late_s(self, item: Item, position: int) -> float:
        """How late ``item`` arrives when it is the plan's copy number ``position`` (0-based)."""
        finish = self.backlog_s + (position + 1) * self.copy_s
        return max(0.0, finish - self.deadlines[item.distance - 1])

    def delta(self, item: Item, position: int) -> float:
        """Cost of prefetching ``item`` at ``position`` minus its cost when not prefetched."""
        c = item.confidence
        return c * self.late_s(item, position) + (1.0 - c) * self.waste_s - c * item.miss_s


def plan_cost(inst: Instance, order: Sequence[int]) -> float:
    """Expected stall (seconds) of prefetching ``inst.items[i]`` for ``i`` in ``order`` (in
    that link order) and loading or CPU-computing the rest when needed."""
    base = sum(item.confidence * item.miss_s for item in inst.items)
    return base + sum(inst.delta(inst.items[i], n) for n, i in enumerate(order))


def solve(inst: Instance, max_candidates: int = 16) -> list[int]:
    """The prefetch order of least :func:`plan_cost` (see module docstring); indices into
    ``inst.items``."""
    classes: dict[int, list[int]] = {}
    last_useful = -1  # the latest link position at which some candidate still gains
    copy_s, backlog_s, waste_s = inst.copy_s, inst.backlog_s, inst.waste_s
    for i, item in enumerate(inst.items):
        if inst.delta(item, 0) < 0.0:  # else never worth a copy, at any position
            classes.setdefault(item.distance, []).append(i)
            # delta(p) < 0  <=>  late(p) < miss - (1 - c) waste / c; late grows with p
            slack = item.miss_s - (1.0 - item.confidence) * waste_s / item.confidence
            finish_by = inst.deadlines[item.distance - 1] + slack
            last_useful = max(last_useful, math.ceil((finish_by - backlog_s) / copy_s) - 1)
    positions = min(inst.max_keys, last_useful + 1)
    if not classes or positions <= 0:
        return []
    lists = []  # per distance: (indices, confidences, misses, deadline), most confident first
    for d in sorted(classes):
        members = sorted(classes[d], key=lambda i: (-inst.items[i].confidence, inst.items[i].key))
        members = members[:min(max_candidates, positions)]
        lists.append((members, [inst.items[i].confidence for i in members],
                      [inst.items[i].miss_s for i in members], inst.deadlines[d - 1]))
    start = (0,) * len(lists)
    best: dict[tuple[int, ...], tuple[float, tuple[int, ...] | None, int]] = {
        start: (0.0, None, -1)}
    frontier = [start]
    answer, answer_cost = start, 0.0
    for position in range(positions):
        finish = backlog_s + (position + 1) * copy_s
        grown: dict[tuple[int, ...], tuple[float, tuple[int, ...] | None, int]] = {}
        for state in frontier:
            cost = best[state][0]
            for c, (members, conf, miss, deadline) in enumerate(lists):
                taken = state[c]
                if taken >= len(members):
                    continue
                p = conf[taken]
                late = finish - deadline if finish > deadline else 0.0
                new_cost = cost + p * (late - miss[taken]) + (1.0 - p) * waste_s
                nxt = state[:c] + (taken + 1,) + state[c + 1:]
                old = grown.get(nxt)
                if old is None or new_cost < old[0]:
                    grown[nxt] = (new_cost, state, members[taken])
        if not grown:
            break
        best.update(grown)
        frontier = list(grown)
        for state, (cost, _, _) in grown.items():
            if cost < answer_cost - 1e-15:
                answer, answer_cost = state, cost
    order = []
    state = answer
    while state != start:
        _, prev, i = best[state]
        order.append(i)
        assert prev is not None
        state = prev
    return order[::-1]


def exhaustive_cost(inst: Instance) -> float:
    """The least :func:`plan_cost` over every subset of the candidates in every link order:
    the reference :func:`solve` is checked against (factorial time: small instances only)."""
    n = len(inst.items)
    best = plan_cost(inst, [])
    for size in range(1, min(n, inst.max_keys) + 1):
        for order in itertools.permutations(range(n), size):
            best = min(best, plan_cost(inst, order))
    return best


def fates(inst: Instance, order: Sequence[int]) -> dict[int, str]:
    """Each candidate key's fate under the plan ``order``: prefetch, demand or cpu."""
    chosen = {inst.items[i].key for i in order}
    return {item.key: PREFETCH if item.key in chosen else (CPU if item.on_cpu else DEMAND)
            for item in inst.items}


@register("presched")
class PreSched(CostAwarePlanner):
    """PreScope's cross-layer plan: per expert prefetch, on demand or CPU, solved exactly over
    the horizon (see module docstring). After :meth:`plan`, :attr:`fates` maps every candidate
    key to its fate and :attr:`instance` holds the problem solved (candidates too unconfident to
    ever gain from a copy are left out of it: their fate is demand or CPU)."""

    decision_cost = DecisionCost("cpu", 12.0e-6, 0.1e-6)

    @dataclass(frozen=True)
    class Params(CostAwarePlanner.Params):
        """As ``cost-aware``, with the CPU considered by default; ``max_candidates``: most
        candidates per distance entering the exact program."""

        consider_cpu: bool = True
        max_candidates: int = 16

        def __post_init__(self) -> None:
            super().__post_init__()
            require(self.max_candidates >= 1, "max_candidates must be at least 1")

    def plan(self, ctx: LayerContext, prediction: Prediction | None) -> FetchPlan:
        """Build the instance from the prediction and the cost model, solve it, issue it."""
        plan, wanted = self._start_plan(ctx, False), self.wanted
        self._order: list[int] = []
        self._skipped: list[tuple[int, int, float]] = []  # (key, distance, confidence)
        self._batch = max(ctx.num_tokens, 1)
        horizon = prediction.horizon if prediction is not None else 1
        backlog_s, wait_s, layer_s, max_keys = self._frame(ctx, plan, horizon)
        if prediction is None:
            return plan
        inst = self.instance = self._instance(ctx, prediction, backlog_s, wait_s, layer_s,
                                              max_keys)
        order = self._order = solve(inst, self.params.max_candidates)
        for i in order:
            key = inst.items[i].key
            plan.keys.append(key)
            wanted.add(key)
        return plan

    @property
    def fates(self) -> dict[int, str]:
        """Every candidate key of the last plan -> prefetch, demand or cpu (computed on access:
        for reports and tests, not the hot path)."""
        if not hasattr(self, "instance"):
            return {}
        return fates(self.full_instance(), self._order)

    def full_instance(self) -> Instance:
        """The last instance with the skipped candidates added back (after the solved ones, so
        the plan's indices stay valid): for scoring other plans, e.g. the greedy baseline's."""
        inst = self.instance
        extra = tuple(self._item(key, d, conf, self._batch) for key, d, conf in self._skipped)
        return Instance(inst.items + extra, inst.copy_s, inst.backlog_s, inst.deadlines,
                        inst.waste_s, inst.max_keys)

    def _item(self, key: int, distance: int, conf: float, batch: int) -> Item:
        """A candidate with its miss cost: the cheaper of a demand copy and the CPU's extra time
        for its expected tokens (the CPU only with ``consider_cpu``)."""
        cm = self.cost_model
        tokens = max(tokens_from_union(conf, batch), 1e-9)
        on_cpu = self.params.consider_cpu and \
            cm.cpu_expert_s(tokens) - cm.gpu_expert_s(tokens) < self.copy_s
        return Item(key, distance, conf, self._miss_s(tokens), on_cpu)

    def _instance(self, ctx: LayerContext, prediction: Prediction, backlog_s: float,
                  wait_s: float, layer_s: float, max_keys: int) -> Instance:
        """The candidates of ``prediction`` not present yet (present ones become wanted)."""
        resident, in_flight = ctx.view.resident, ctx.view.in_flight
        wanted, n_experts = self.wanted, self.num_experts
        batch = max(ctx.num_tokens, 1)
        # a candidate can only gain if c * miss > (1 - c) * waste even when on time, and miss is
        # at most one copy: below this confidence it is never prefetched, whatever its fate
        useless = self._waste_s / (self.copy_s + self._waste_s) if self._waste_s > 0 else 0.0
        threshold = max(self._threshold, useless)
        items = []
        for i in range(prediction.horizon):
            base = prediction.targets[i] * n_experts
            for expert, conf in zip(prediction.ranked[i], prediction.confidence[i],
                                    strict=False):
                key = base + expert
                if key in resident or key in in_flight:
                    if conf >= self._threshold:
                        wanted.add(key)
                    continue
                if conf <= threshold:
                    if conf < self._threshold:
                        break
                    self._skipped.append((key, i + 1, conf))  # never prefetched
                    continue
                items.append(self._item(key, i + 1, conf, batch))
        # a layer lasts its GPU work plus the expected stall of its misses; before the plan is
        # known, take every candidate of the layer as missed (an upper bound of its length)
        stall = [0.0] * prediction.horizon
        for item in items:
            stall[item.distance - 1] += item.confidence * item.miss_s
        for key, d, conf in self._skipped:
            stall[d - 1] += conf * self._item(key, d, conf, batch).miss_s
        deadlines, start = [], wait_s
        for d in range(prediction.horizon):
            start += layer_s if d == 0 else layer_s + stall[d - 1]
            deadlines.append(start)
        deadlines = tuple(deadlines)
        return Instance(tuple(items), self.copy_s, backlog_s, deadlines, self._waste_s,
                        max(max_keys, 0))
