"""Offline evaluation: replay a trace through a policy with instant copies.

Steps are ``batch`` consecutive trace rows; the experts a step needs at a layer are the union over
its tokens. At every layer the engine call sequence of :mod:`policies.base` runs against a
:class:`~policies.cache.SlotCache` where every copy completes at once (infinite bandwidth), so the
hit ratio is the one the policy's cache rule and prefetch plans reach when timing never interferes.
A needed expert is a hit when resident as its layer starts. The predictor is scored at the same
time: precision and recall of the experts scored at least ``threshold``, and top-k accuracy (the
fraction of the needed experts found among the ``n`` best-scored ones, ``n`` = how many the batch
needs there; ``k`` at batch 1), per lookahead distance and target layer. Targets in the next step
(wrap-around) are not scored.

Every decision is checked; a policy breaking the contract raises :class:`PolicyViolation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moe_offload_lab.policies.base import PlacementError, Policy, split_placement
from moe_offload_lab.policies.cache import SlotCache
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel
from moe_offload_lab.policies.needs import consecutive_batches, step_experts
from moe_offload_lab.traces.format import Trace


class PolicyViolation(AssertionError):
    """A policy returned a decision the contract forbids (a bug in the policy)."""


@dataclass
class CacheStats:
    """Counts of one replay."""

    accesses: int = 0
    hits: int = 0
    cpu_computed: int = 0
    streamed: int = 0
    demand_fetches: int = 0
    prefetched: int = 0
    prefetch_used: int = 0
    evictions: int = 0

    @property
    def hit_ratio(self) -> float:
        """Hits over accesses (0 for no accesses)."""
        return self.hits / self.accesses if self.accesses else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Stable keys."""
        return {"accesses": self.accesses, "hits": self.hits, "hit_ratio": self.hit_ratio,
                "cpu_computed": self.cpu_computed, "streamed": self.streamed,
                "demand_fetches": self.demand_fetches, "prefetched": self.prefetched,
                "prefetch_used": self.prefetch_used, "evictions": self.evictions}


@dataclass
class PredictionStats:
    """Sums per distance index and target layer, [h][L] each."""

    horizon: int
    num_layers: int
    actual: list[list[int]] = field(default_factory=list)
    predicted: list[list[int]] = field(default_factory=list)
    correct: list[list[int]] = field(default_factory=list)  # predicted and needed
    top_correct: list[list[int]] = field(default_factory=list)  # needed among the top n

    def __post_init__(self) -> None:
        for name in ("actual", "predicted", "correct", "top_correct"):
            setattr(self, name, [[0] * self.num_layers for _ in range(self.horizon)])

    @staticmethod
    def _ratio(num: int, den: int) -> float:
        return num / den if den else math.nan

    def summary(self, i: int, layer: int | None = None) -> dict[str, Any]:
        """Precision, recall and top-k accuracy of distance index ``i`` (one layer or all)."""
        pick = (lambda rows: rows[i][layer]) if layer is not None else (lambda rows: sum(rows[i]))
        actual, predicted = pick(self.actual), pick(self.predicted)
        correct, top = pick(self.correct), pick(self.top_correct)
        return {"precision": self._ratio(correct, predicted),
                "recall": self._ratio(correct, actual),
                "topk_accuracy": self._ratio(top, actual), "predicted": predicted,
                "actual": actual}


@dataclass
class EvalResult:
    """Everything one evaluation measured."""

    policy: str
    is_oracle: bool
    predictor: str
    replacement: str
    model: str
    num_layers: int
    num_experts: int
    top_k: int
    tokens: int
    batch: int
    steps: int
    capacity_slots: int
    threshold: float
    cache: CacheStats
    prediction: PredictionStats | None

    def to_dict(self) -> dict[str, Any]:
        """Stable, JSON-safe keys (NaN becomes None)."""
        out: dict[str, Any] = {
            "policy": self.policy, "oracle": self.is_oracle, "model": self.model,
            "num_layers": self.num_layers, "num_experts": self.num_experts, "top_k": self.top_k,
            "tokens": self.tokens, "batch": self.batch, "steps": self.steps,
            "cache": {"slots": self.capacity_slots,
                      "fraction": self.capacity_slots / (self.num_layers * self.num_experts),
                      "replacement": self.replacement, **self.cache.to_dict()},
        }
        pred = self.prediction
        if pred is None:
            out["prediction"] = None
        else:
            out["prediction"] = {
                "predictor": self.predictor, "horizon": pred.horizon, "threshold": self.threshold,
                "per_distance": [{"distance": i + 1, **_clean(pred.summary(i))}
                                 for i in range(pred.horizon)],
                "per_layer": [{"distance": i + 1, "layer": layer,
                               **_clean(pred.summary(i, layer))}
                              for i in range(pred.horizon) for layer in range(pred.num_layers)
                              if layer >= i + 1],
            }
        return out


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def evaluate(trace: Trace, policy: Policy, capacity_slots: int, *, batch: int = 1,
             threshold: float = 0.5, cost_model: CostModel | None = None,
             score_predictions: bool = True) -> EvalResult:
    """Replay ``trace`` through ``policy`` (reset here) with a ``capacity_slots`` cache."""
    spec = trace.spec
    n_layers, n_experts = spec.num_moe_layers, spec.num_experts
    schedule = consecutive_batches(trace.num_tokens, batch)
    cost_model = cost_model or CostModel.for_spec(spec)
    policy.reset(spec, capacity_slots, cost_model, trace=trace, schedule=schedule)
    cache = SlotCache(capacity_slots, n_experts, n_layers, policy.partition_slots)
    ctx = LayerContext(spec, cache)
    stats = CacheStats()
    current_prediction = getattr(policy, "current_prediction", None)
    horizon = getattr(policy, "horizon", 0)
    scoring = score_predictions and current_prediction is not None and horizon > 0
    quality = PredictionStats(horizon, n_layers) if scoring else None
    pending: set[int] = set()  # prefetched keys not accessed yet

    def evict(need: int, layer: int, protected: list[int]) -> int:
        victims = choose_victims(policy, cache, need, layer, protected, n_experts)
        for key in victims:
            cache.remove(key)
            pending.discard(key)
            policy.on_evict(key)
            stats.evictions += 1
        return len(victims)

    ids_all, gates_all = trace.expert_ids, trace.gate_weights
    for step, rows in enumerate(schedule):
        ids = ids_all[rows]  # [B, L, k]
        gates = gates_all[rows]  # [B, L, k]
        experts, tokens = step_experts(ids, n_experts)
        lookahead_step = {d: columns[rows] for d, columns in trace.lookahead.items()}  # [B, L, k]
        ctx.begin_step(step, trace.request_id[rows], trace.phase[rows], rows)
        policy.begin_step(ctx)
        needed_sets = [set(e) for e in experts] if scoring else None
        for layer in range(n_layers):
            base = layer * n_experts
            keys = [base + e for e in experts[layer]]
            ctx.set_layer(layer, experts[layer], tokens[layer], keys, ids[:, layer],
                          gates[:, layer], {d: la[:, layer] for d, la in lookahead_step.items()})
            policy.on_layer(ctx)
            resident = cache.resident
            missing = [key for key in keys if key not in resident]
            stats.accesses += len(keys)
            stats.hits += len(keys) - len(missing)
            if pending:
                for key in keys:
                    if key in pending and key in resident:
                        pending.discard(key)
                        stats.prefetch_used += 1
            if missing:
                gpu, cpu, admitted = place_and_admit(policy, ctx, missing, cache, layer,
                                                     evict, keys)
                stats.cpu_computed += len(cpu)
                stats.streamed += len(gpu) - len(admitted)
                stats.demand_fetches += len(gpu)
                for key in admitted:
                    if cache.free_slots(layer) > 0:
                        cache.insert(key)
                        policy.on_fetch_done(key)
                    else:
                        stats.streamed += 1
            plan = policy.prefetch(ctx)
            for key in plan.cancel:
                if key not in cache.in_flight:
                    raise PolicyViolation(f"{policy.name}: cancelled key {key}, which is not in "
                                          f"flight")
            for key in plan_with_room(policy.name, plan.keys, cache, n_layers, n_experts, evict,
                                      keys):
                cache.insert(key)
                policy.on_fetch_done(key)
                pending.add(key)
                stats.prefetched += 1
            if quality is not None:
                _score(current_prediction(ctx), needed_sets, threshold, quality)
        policy.end_step(ctx)

    return EvalResult(
        policy=policy.name, is_oracle=policy.is_oracle,
        predictor=getattr(getattr(policy, "predictor", None), "name", "none"),
        replacement=getattr(getattr(policy, "replacement", None), "name", "?"),
        model=spec.name, num_layers=n_layers, num_experts=n_experts, top_k=spec.top_k,
        tokens=trace.num_tokens, batch=batch, steps=len(schedule),
        capacity_slots=capacity_slots, threshold=threshold, cache=stats, prediction=quality)


def validate_plan(name: str, keys: list[int], cache: SlotCache, n_layers: int,
                  n_experts: int) -> None:
    """Raise PolicyViolation unless every planned key is valid, absent from the cache and unique."""
    n_keys = n_layers * n_experts
    resident, in_flight = cache.resident, cache.in_flight
    for key in keys:  # is_valid_key, inlined: this runs at every layer
        if type(key) is not int or not 0 <= key < n_keys:
            raise PolicyViolation(f"{name}: prefetch key {key!r} is not a valid key")
        if key in resident or key in in_flight:
            raise PolicyViolation(f"{name}: prefetch of key {key}, which is already present")
    if len(keys) > 1 and len(set(keys)) != len(keys):
        twice = next(key for i, key in enumerate(keys) if key in keys[:i])
        raise PolicyViolation(f"{name}: prefetch of key {twice}, which is planned twice")


def place_and_admit(policy: Policy, ctx: LayerContext, missing: Sequence[int],
                    cache: SlotCache, layer: int,
                    evict: Callable[[int, int, Sequence[int]], None], protected: Sequence[int]
                    ) -> tuple[list[int], list[int], list[int]]:
    """Steps 2 to 4 of the contract, shared by every engine: place the missing keys, admit the
    GPU ones, and free slots in ``layer``'s pool for the admitted ones with one
    ``evict(need, layer, protected)`` call (``protected``: the keys the layer needs). Returns
    ``(fetch, cpu, admitted)``: keys to copy (admitted or streamed), keys computed on the host,
    and the admitted subset of ``fetch``. A bad placement raises :class:`PolicyViolation`."""
    try:
        fetch, cpu = split_placement(policy, ctx, missing)
    except PlacementError as exc:
        raise PolicyViolation(str(exc)) from None
    admitted = [key for key in fetch if policy.admit(key, ctx)]
    need = len(admitted) - cache.free_slots(layer)
    if need > 0:
        evict(need, layer, protected)
    return fetch, cpu, admitted


def choose_victims(policy: Policy, cache: SlotCache, need: int, layer: int,
                   protected: Sequence[int], n_experts: int) -> list[int]:
    """``policy.evict(cache, need, layer)``, checked, shared by every engine: at most ``need``
    distinct resident keys, none the current layer needs (``protected``), all of ``layer``'s
    partition when the cache is partitioned. Raises :class:`PolicyViolation` before the caller
    frees any slot; the caller frees them and calls ``policy.on_evict``."""
    name = policy.name
    victims = list(policy.evict(cache, need, layer))
    if len(victims) > need or (len(victims) > 1 and len(set(victims)) != len(victims)):
        raise PolicyViolation(f"{name}: evict({need}) returned {victims}")
    resident, partitioned = cache.resident, cache.partition_slots is not None and layer >= 0
    for key in victims:
        if key not in resident:
            raise PolicyViolation(f"{name}: evicted key {key}, which is not resident"
                                  + (" (it is in flight)" if key in cache.in_flight else ""))
        if key in protected:
            raise PolicyViolation(f"{name}: evicted key {key}, needed by the current layer")
        if partitioned and key // n_experts != layer:
            raise PolicyViolation(f"{name}: evicted key {key} outside layer {layer}'s "
                                  f"partition")
    return victims


def validate_cancel(name: str, key: int, purpose: str | None, protected: Sequence[int]) -> None:
    """Raise PolicyViolation unless a cancelled ``key`` is a prefetch in flight (``purpose``: its
    copy's, None when no copy is in flight) that the current layer does not need."""
    if purpose != "prefetch":
        raise PolicyViolation(f"{name}: cancelled key {key}, which is not a prefetch in flight")
    if key in protected:
        raise PolicyViolation(f"{name}: cancelled key {key}, needed by the current layer")


def plan_with_room(name: str, keys: Sequence[int], cache: SlotCache, n_layers: int,
                   n_experts: int, evict: Callable[[int, int, Sequence[int]], None],
                   protected: Sequence[int]) -> list[int]:
    """Step 5 of the contract, shared by every engine: check a prefetch plan
    (:func:`validate_plan`), free slots for it with one ``evict(need, layer, protected)`` call
    for the whole plan (``layer`` -1), or one per partition (the keys' layer) when the cache is
    partitioned, and return the keys that get a slot, in order, for the caller to start a fetch
    (taking one slot) for each. Unpartitioned, the rest of the plan is dropped at the first key
    without room; partitioned, only the keys whose partition is full."""
    if not keys:
        return []
    validate_plan(name, keys, cache, n_layers, n_experts)
    if cache.partition_slots is None:
        free = cache.free_slots()
        if len(keys) > free:
            evict(len(keys) - free, -1, protected)
            free = cache.free_slots()
        return list(keys) if free >= len(keys) else list(keys[:max(free, 0)])
    per_layer: dict[int, int] = {}
    for key in keys:
        per_layer[key // n_experts] = per_layer.get(key // n_experts, 0) + 1
    for layer, count in per_layer.items():
        need = count - cache.free_slots(layer)
        if need > 0:
            evict(need, layer, protected)
    free_in = {layer: cache.free_slots(layer) for layer in per_layer}
    out = []
    for key in keys:
        layer = key // n_experts
        if free_in[layer] > 0:
            out.append(key)
            free_in[layer] -= 1
    return out


def _score(pred: Any, needed_sets: list[set[int]], threshold: float,
           quality: PredictionStats) -> None:
    for i in range(quality.horizon):
        if pred.wraps[i]:
            continue
        target = pred.targets[i]
        needed = needed_sets[target]
        ranked, confidence = pred.ranked[i], pred.confidence[i]
        n = len(needed)
        quality.actual[i][target] += n
        top = 0
        for e in ranked[:n]:
            if e in needed:
                top += 1
        quality.top_correct[i][target] += top
        m = 0
        correct = 0
        for j, conf in enumerate(confidence):
            if conf < threshold:
                break
            m = j + 1
            if ranked[j] in needed:
                correct += 1
        quality.predicted[i][target] += m
        quality.correct[i][target] += correct


def hit_ratio(trace: Trace, policy: Policy, capacity_slots: int, batch: int = 1) -> float:
    """Hit ratio of ``policy`` replaying ``trace`` (no prediction scoring)."""
    return evaluate(trace, policy, capacity_slots, batch=batch,
                    score_predictions=False).cache.hit_ratio
