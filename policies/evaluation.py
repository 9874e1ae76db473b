"""Offline evaluation: replay a trace through a policy with instant copies.

Steps are ``batch`` consecutive trace rows; the experts a step needs at a layer are the union over
its tokens. At every layer the contract's call sequence (:class:`policies.protocol.LayerProtocol`,
the one every engine drives) runs against a :class:`~policies.cache.SlotCache` where every copy
completes at once (infinite bandwidth), so the
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
from dataclasses import dataclass, field
from typing import Any

from moe_offload_lab.policies.base import Policy
from moe_offload_lab.policies.cache import SlotCache
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel
from moe_offload_lab.policies.needs import consecutive_batches, step_experts
from moe_offload_lab.policies.protocol import (  # noqa: F401 - re-exported for engines and tests
    LayerProtocol,
    PolicyViolation,
    Transfers,
    choose_victims,
    place_and_admit,
    plan_with_room,
    validate_cancel,
    validate_plan,
)
from moe_offload_lab.traces.format import Trace


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
    lowbit_computes: int = 0  # expert computations from low-precision copies (HOBBIT)

    @property
    def hit_ratio(self) -> float:
        """Hits over accesses (0 for no accesses)."""
        return self.hits / self.accesses if self.accesses else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Stable keys."""
        return {"accesses": self.accesses, "hits": self.hits, "hit_ratio": self.hit_ratio,
                "cpu_computed": self.cpu_computed, "streamed": self.streamed,
                "demand_fetches": self.demand_fetches, "prefetched": self.prefetched,
                "prefetch_used": self.prefetch_used, "evictions": self.evictions,
                "lowbit_computes": self.lowbit_computes}


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


class _InstantCopies(Transfers):
    """Offline replay: every copy completes at once (infinite bandwidth)."""

    def start_copy(self, key: int, purpose: str, layer: int) -> None:
        """Nothing to wait for: the copy has landed."""
        return None


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
    protocol = LayerProtocol(policy, cache, _InstantCopies())
    ctx = LayerContext(spec, cache)
    current_prediction = getattr(policy, "current_prediction", None)
    horizon = getattr(policy, "horizon", 0)
    scoring = score_predictions and current_prediction is not None and horizon > 0
    quality = PredictionStats(horizon, n_layers) if scoring else None

    ids_all, gates_all = trace.expert_ids, trace.gate_weights
    accesses = 0
    for step, rows in enumerate(schedule):
        ids = ids_all[rows]  # [B, L, k]
        gates = gates_all[rows]  # [B, L, k]
        experts, tokens = step_experts(ids, n_experts)
        lookahead_step = {d: columns[rows] for d, columns in trace.lookahead.items()}  # [B, L, k]
        ctx.begin_step(step, trace.request_id[rows], trace.phase[rows], rows)
        protocol.begin_step(ctx)
        needed_sets = [set(e) for e in experts] if scoring else None
        for layer in range(n_layers):
            ctx.set_layer(layer, experts[layer], tokens[layer], None, ids[:, layer],
                          gates[:, layer], {d: la[:, layer] for d, la in lookahead_step.items()})
            protocol.layer(ctx)
            accesses += len(ctx.keys)
            if quality is not None:
                _score(current_prediction(ctx), needed_sets, threshold, quality)
        protocol.end_step(ctx)

    p = protocol
    stats = CacheStats(accesses=accesses, hits=p.hits(accesses), cpu_computed=p.n_cpu,
                       streamed=p.n_stream, demand_fetches=p.n_demand + p.n_stream,
                       prefetched=p.n_prefetch, prefetch_used=p.n_prefetch_used,
                       evictions=p.n_evicted, lowbit_computes=p.n_lowbit)
    return EvalResult(
        policy=policy.name, is_oracle=policy.is_oracle,
        predictor=getattr(getattr(policy, "predictor", None), "name", "none"),
        replacement=getattr(getattr(policy, "replacement", None), "name", "?"),
        model=spec.name, num_layers=n_layers, num_experts=n_experts, top_k=spec.top_k,
        tokens=trace.num_tokens, batch=batch, steps=len(schedule),
        capacity_slots=capacity_slots, threshold=threshold, cache=stats, prediction=quality)


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
