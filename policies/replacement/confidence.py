"""Prophet's confidence-guided cache, GPU tier (L1): keep and promote experts by predicted need.

Every resident expert ``key`` (MoE layer ``m``) gets a *need probability* ``p`` - that the batch
will use it the next time layer ``m`` runs - and a *distance* ``d`` - MoE layers until then
(``1`` for the next layer, ``L`` for the layer that just ran). Its value to the cache is its
**hit density** ``p / d``: expected hits per slot per layer of residence (Beckmann et al.'s
hit-density idea, with the predictor supplying ``p``).

- ``p`` from the predictor: when the current prediction covers layer ``m`` (``m`` among its
  next ``h`` target layers, in this step or - wrapping around - the next; a row the predictor
  leaves empty covers nothing), ``p`` is the predictor's confidence for the expert there;
  an expert it does not rank gets the probability mass the ranking leaves (the experts the
  batch uses at ``m`` on average, minus the ranked confidences) shared evenly with the other
  unranked experts (a predictor that ranks only its top few is not read as certain about the
  rest).
- ``p`` beyond the horizon: an online two-state estimate per MoE layer, learned from accesses:
  ``P(used at the next visit | used at the last visit)`` for experts the batch used when their
  layer last ran, ``P(used | not used)`` for the others (a prefetch that was never used, an old
  resident). These are the model's temporal reuse (adjacent tokens share experts about 2x as
  often as chance on Mixtral).

Decisions (``keep`` = eviction order, ``promote`` = what may enter the tier):

- **keep**: victims are the residents of lowest hit density first (ties: least recently used).
  Unlike LRU - which at batch 1 evicts exactly the experts of the layers about to run, the ones
  touched longest ago - this keeps what the predictor expects soon and drops what it does not.
- **promote, demand**: a missing expert is always computed, but it takes a slot only when its
  own density (``P(used | used) / L``: its next use is a whole step away) beats the lowest
  density among the evictable residents, or a slot is free; otherwise it is streamed
  (:meth:`admit` False).
- **promote, prefetch**: a planned prefetch replaces a resident only when its density
  (confidence over distance) beats the resident's; the rest of the plan is dropped (the engine
  starts plan keys while slots are free).

``keep_threshold`` (default 0) ignores predictor confidences below it (they fall back to the
two-state estimate). Where confidence is uninformative (no predictor, a flat predictor) the rule
still differs from LRU through the distance term and the two-state reuse estimate.

The lower tiers (L2 host DRAM, L3 NVMe) are decided by the same densities through
:class:`~policies.replacement.tiers.TieredRule`: the simulator's host tier (``sim/host.py``)
keeps DRAM residents by density and promotes the predicted keys from NVMe when they are worth
more than the weakest DRAM resident.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

from moe_offload_lab.policies.cache import CacheView
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.registry import require
from moe_offload_lab.policies.replacement.base import ReplacementRule, register
from moe_offload_lab.policies.replacement.tiers import TieredRule
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

_OLD = -1  # bucket of residents used ``ages - 1`` or more visits ago, or never


@register("confidence")
class ConfidenceGuided(ReplacementRule, TieredRule):
    """Prophet's confidence-guided cache: hit density = need probability / layers until use."""

    uses_prediction = True
    decision_cost = DecisionCost("cpu", 6.0e-6, 0.15e-6)

    @dataclass(frozen=True)
    class Params:
        """``keep_threshold``: predictor confidences below it are not trusted (the two-state
        reuse estimate is used instead); ``admit_by_confidence``: stream demand fetches whose
        density loses to every resident (False: admit all, as plain demand paging);
        ``promote_by_confidence``: refuse prefetches that would replace a denser resident;
        ``prior``: the reuse probability assumed before a layer has been observed; ``ages``:
        how many visits since an expert's last use are told apart (the last one pools older
        and never-used experts)."""

        keep_threshold: float = 0.0
        admit_by_confidence: bool = True
        promote_by_confidence: bool = True
        prior: float = 0.5
        ages: int = 16

        def __post_init__(self) -> None:
            require(0.0 <= self.keep_threshold <= 1.0, "keep_threshold must lie in [0, 1]")
            require(0.0 <= self.prior <= 1.0, "prior must lie in [0, 1]")
            require(self.ages >= 1, "ages must be at least 1")

    def reset(self, spec: ModelSpec, capacity_slots: int, trace: Trace | None = None,
              schedule: object = None) -> None:
        """Empty the buckets, the reuse counts and the prediction state."""
        super().reset(spec, capacity_slots, trace, schedule)
        n_layers, ages = spec.num_moe_layers, self.params.ages
        self.spec_top_k = spec.top_k
        # residents per layer in buckets by the visit of the layer that last used them (_OLD:
        # ages - 1 visits ago or more, or never), each bucket least recently used first
        self._buckets: list[dict[int, OrderedDict[int, None]]] = [{} for _ in range(n_layers)]
        self._bucket_of: dict[int, int] = {}  # resident key -> its bucket
        self._visits = [0] * n_layers  # completed visits per layer
        self._last_use: dict[int, int] = {}  # key -> the visit of its layer that last used it
        # per layer and age: [residents of that age at a visit, of which the batch used]
        self._counts = [[[0, 0] for _ in range(ages)] for _ in range(n_layers)]
        self._order: list[list[tuple[float, int, int]] | None] = [None] * n_layers
        self._layer = n_layers - 1  # the layer that ran last (none yet: as if a step ended)
        self._prediction: Prediction | None = None
        self._version = -1
        self._predicted: dict[int, float] = {}
        self._covered: dict[int, float] = {}  # covered target layer -> p of an unranked expert
        self._covered_at: dict[int, int] = {}  # covered target layer -> its absolute position
        self._now = -1  # absolute position (step * L + layer) of the layer that ran last
        self._needed = [[0, 0] for _ in range(n_layers)]  # per layer: experts used, visits
        self._incoming: list[float] = []  # densities of the plan being admitted, best first
        self._incoming_version = -1

    def bind_prediction(self, prediction: Prediction) -> None:
        """Keep a reference to the predictor's reused prediction."""
        self._prediction = prediction

    # ---- bookkeeping --------------------------------------------------------------------------
    def _bucket_age(self, layer: int, visit: int) -> int:
        cap = self.params.ages - 1
        return cap if visit == _OLD else min(cap, self._visits[layer] - 1 - visit)

    def age(self, key: int) -> int:
        """Visits of the key's layer since the batch last used it (0: at the last visit),
        capped at ``ages - 1`` (also for keys never used)."""
        last = self._last_use.get(key)
        return self._bucket_age(key // self.num_experts, _OLD if last is None else last)

    def on_access(self, ctx: LayerContext) -> None:
        """Count the reuse of layer ``ctx.layer``'s residents per age, then move the ones the
        batch uses now to this visit's bucket (age 0); buckets that reach the oldest age pool."""
        layer = self._layer = ctx.layer
        self._now = ctx.step * self.num_layers + layer
        needed = self._needed[layer]
        needed[0] += len(ctx.keys)
        needed[1] += 1
        buckets, counts, bucket_of = self._buckets[layer], self._counts[layer], self._bucket_of
        for visit, bucket in buckets.items():
            counts[self._bucket_age(layer, visit)][0] += len(bucket)
        visit_now = self._visits[layer]
        fresh: OrderedDict[int, None] = OrderedDict()
        for key in ctx.keys:
            old = bucket_of.get(key)
            if old is not None:
                counts[self._bucket_age(layer, old)][1] += 1
                emptied = buckets[old]
                del emptied[key]
                if not emptied:
                    del buckets[old]
                fresh[key] = None
                bucket_of[key] = visit_now
            self._last_use[key] = visit_now
        if fresh:
            buckets[visit_now] = fresh
        self._visits[layer] = visit_now + 1
        cap = self.params.ages - 1
        for visit in sorted(v for v in buckets if v != _OLD and self._bucket_age(layer, v) >= cap):
            pooled = buckets.setdefault(_OLD, OrderedDict())
            for key in buckets.pop(visit):
                pooled[key] = None
                bucket_of[key] = _OLD
        self._order[layer] = None

    def on_insert(self, key: int) -> None:
        """A new resident joins its layer's bucket of its last use (or the oldest)."""
        if key in self._bucket_of:
            return
        layer = key // self.num_experts
        last = self._last_use.get(key)
        visit = _OLD if last is None or self.age(key) >= self.params.ages - 1 else last
        buckets = self._buckets[layer]
        if visit not in buckets:
            buckets[visit] = OrderedDict()
            self._order[layer] = None
        buckets[visit][key] = None
        self._bucket_of[key] = visit

    def on_remove(self, key: int) -> None:
        """Forget ``key`` (tolerates unknown keys)."""
        visit = self._bucket_of.pop(key, None)
        if visit is not None:
            buckets = self._buckets[key // self.num_experts]
            bucket = buckets[visit]
            del bucket[key]
            if not bucket:  # a bucket that comes back is new: on_insert resets the order
                del buckets[visit]

    # ---- the densities ------------------------------------------------------------------------
    def reuse_probability(self, layer: int, age: int) -> float:
        """Online estimate of ``P(the batch uses an expert at its layer's next visit | its
        age)``, with one pseudo-observation of ``prior / 2**age``."""
        total, hits = self._counts[layer][age]
        return (hits + self.params.prior / 2 ** age) / (total + 1.0)

    def _refresh(self) -> None:
        """Read the current prediction (once per prediction version): the confidence of every
        ranked key, and for each covered layer the probability of an expert it did not rank -
        the mass the ranking leaves (experts the batch uses there on average, minus the ranked
        confidences) spread evenly over the unranked experts."""
        pred = self._prediction
        if pred is None or pred.version == self._version:
            return
        self._version = pred.version
        predicted, covered, at = self._predicted, self._covered, self._covered_at
        predicted.clear()
        covered.clear()
        at.clear()
        origin = pred.step * self.num_layers + pred.layer
        threshold, n_experts = self.params.keep_threshold, self.num_experts
        for i in range(pred.horizon):
            target = pred.targets[i]
            if target in covered or not pred.ranked[i]:  # a row it left empty says nothing
                continue
            base = target * n_experts
            mass, ranked = 0.0, 0
            for expert, conf in zip(pred.ranked[i], pred.confidence[i], strict=False):
                if conf < threshold:
                    break
                predicted[base + expert] = conf
                mass += conf
                ranked += 1
            used, visits = self._needed[target]
            expected = used / visits if visits else self.spec_top_k
            rest = n_experts - ranked
            covered[target] = min(1.0, max(0.0, expected - mass) / rest) if rest else 0.0
            at[target] = origin + i + 1

    def distance(self, key: int) -> int:
        """MoE layers until ``key``'s layer runs again: 1 (the next layer) .. L (this one)."""
        return (key // self.num_experts - self._layer - 1) % self.num_layers + 1

    def _is_covered(self, layer: int) -> bool:
        """Whether the prediction is about the NEXT visit of ``layer`` (not the one that just
        ran: a prediction made one layer earlier also covers the current layer)."""
        at = self._covered_at.get(layer)
        return at is not None and 0 < at - self._now <= self.num_layers

    def need_probability(self, key: int) -> float:
        """``p``: the predictor's confidence when its current prediction covers the key's
        layer (0 when it does not rank the key there), else the two-state reuse estimate."""
        self._refresh()
        layer = key // self.num_experts
        if self._is_covered(layer):
            return self._predicted.get(key, self._covered[layer])
        return self.reuse_probability(layer, self.age(key))

    def density(self, key: int) -> float:
        """Hit density ``p / d`` of ``key``."""
        return self.need_probability(key) / self.distance(key)

    def _layer_order(self, layer: int) -> list[tuple[float, int, int]]:
        """The layer's buckets as ``(p, -age, visit)``, least likely used first (ties: older
        first); recomputed after each visit of the layer (its counts and ages change then)."""
        order = self._order[layer]
        if order is None:
            order = sorted((self.reuse_probability(layer, self._bucket_age(layer, v)),
                            -self._bucket_age(layer, v), v) for v in self._buckets[layer])
            self._order[layer] = order
        return order

    def _stream(self) -> Iterator[tuple[float, int]]:
        """``(density, key)`` of every resident, lowest density first: a lazy merge over the
        layers (a covered layer's keys one by one, any other layer's buckets in the cached order
        of :meth:`_layer_order`), so a call that needs a few victims looks at a few keys."""
        self._refresh()
        heap: list[tuple[float, int, int, int]] = []  # (density, tie, layer, index)
        covered_runs: dict[int, list[tuple[float, int]]] = {}
        scale: dict[int, float] = {}  # layer -> 1 / distance
        n_layers, ages, current = self.num_layers, self.params.ages, self._layer
        for layer in range(n_layers):
            buckets = self._buckets[layer]
            if not buckets:
                continue
            inv_d = 1.0 / ((layer - current - 1) % n_layers + 1)
            if self._is_covered(layer):
                predicted, rest = self._predicted, self._covered[layer]
                keyed = [(predicted.get(k, rest) * inv_d, -self.age(k), k) for v in buckets
                         for k in buckets[v]]
                if not keyed:
                    continue
                keyed.sort()
                covered_runs[layer] = [(density, key) for density, _, key in keyed]
                heap.append((keyed[0][0], layer * ages, layer, 0))
            else:
                scale[layer] = inv_d
                heap.append((self._layer_order(layer)[0][0] * inv_d, layer * ages, layer, 0))
        heapq.heapify(heap)
        while heap:
            density, _, layer, index = heapq.heappop(heap)
            if layer in covered_runs:
                run = covered_runs[layer]
                yield run[index]
                if index + 1 < len(run):
                    heapq.heappush(heap, (run[index + 1][0], layer * ages + index + 1, layer,
                                          index + 1))
                continue
            order = self._layer_order(layer)
            for key in self._buckets[layer].get(order[index][2], ()):
                yield density, key
            if index + 1 < len(order):
                heapq.heappush(heap, (order[index + 1][0] * scale[layer],
                                      layer * ages + index + 1, layer, index + 1))

    # ---- decisions ----------------------------------------------------------------------------
    def victims(self, view: CacheView, need: int, layer: int, keep: Collection[int],
                soft: Collection[int], out: list[int]) -> None:
        """Lowest hit density first (LRU within a bucket); for a prefetch (``layer == -1``)
        only residents less dense than the plan keys they make room for."""
        start = len(out)
        target = start + need
        if need <= 0:
            return
        incoming = None
        if layer < 0 and self.params.promote_by_confidence:
            incoming = self._plan_densities(view, soft)
        for density, key in self._stream():
            if key in keep or key in soft or key in out:
                continue
            if incoming is not None:
                slot = len(out) - start
                if slot >= len(incoming) or density >= incoming[slot]:
                    break
            out.append(key)
            if len(out) >= target:
                return
        if len(out) < target and len(self._bucket_of) < len(view.resident):
            self._fallback(view, target, layer, keep, soft, out, self._bucket_of)

    def _plan_densities(self, view: CacheView, soft: Collection[int]) -> list[float]:
        """Densities of the keys a prefetch plan brings in (wanted, not yet present), best
        first; remembered for the composed policy's second call (made without ``soft``)."""
        pred = self._prediction
        version = pred.version if pred is not None else -1
        if not soft:
            return self._incoming if self._incoming_version == version else []
        resident, in_flight = view.resident, view.in_flight
        out = [self.density(k) for k in soft if k not in resident and k not in in_flight]
        out.sort(reverse=True)
        self._incoming, self._incoming_version = out, version
        return out

    def admit(self, key: int, ctx: LayerContext) -> bool:
        """Cache a demand-fetched ``key`` when a slot is free or when it is denser than the
        least dense evictable resident (promotion by confidence); else stream it."""
        if not self.params.admit_by_confidence:
            return True
        layer = key // self.num_experts
        if ctx.view.free_slots(layer if ctx.view.partition_slots is not None else -1) > 0:
            return True
        keep = ctx.keys
        mine = self.reuse_probability(layer, 0) / self.num_layers
        for density, key in self._stream():
            if key not in keep:
                return mine > density
        return True

    # ---- lower tiers (the policy side of the hierarchy; sim/host.py calls these) --------------
    def host_candidates(self) -> list[int]:
        """The keys the current prediction ranks (at or above ``keep_threshold``), most
        confident first: the promotion candidates of the lower tiers."""
        self._refresh()
        predicted = self._predicted
        return sorted(predicted, key=lambda key: -predicted[key])

    def tier_densities(self, keys: Sequence[int]) -> list[float]:
        """Hit densities of ``keys``: what every tier keeps and promotes by."""
        return [self.density(k) for k in keys]
