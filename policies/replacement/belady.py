"""Belady's MIN - an ORACLE upper bound: evict the key whose next use lies furthest ahead.

Needs the trace and the schedule (the future accesses). Keys are compared by their whole future
use sequence, lexicographically (next use first; a tie - common when a layer needs several
experts at once - is broken by the use after that, and so on; never used again is furthest).
The order is precomputed at reset as one integer rank per access event
(:mod:`policies.replacement._belady_kernel`), so every comparison is an int comparison.
With ``bypass`` (default) it also declines to cache a demand-fetched expert whose future is
further than every evictable resident's. This reaches the optimum of demand paging with
admission control (the tests check it against an exhaustive search), so no replacement rule with
the same cache size, partitioned or not, gets a higher hit ratio on demand fetches.
Time of layer ``l`` of step ``s`` is ``s * L + l``.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from moe_offload_lab.policies.cache import CacheView
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.needs import access_stream
from moe_offload_lab.policies.replacement.base import ReplacementRule, register
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec


@register("belady")
class Belady(ReplacementRule):
    """Offline optimal replacement (upper bound; reads the schedule's future)."""

    is_oracle = True
    decision_cost = DecisionCost("cpu", 4.0e-6, 0.5e-6)

    @dataclass(frozen=True)
    class Params:
        """``bypass``: decline demand fetches used later than every evictable resident."""

        bypass: bool = True

    def reset(self, spec: ModelSpec, capacity_slots: int, trace: Trace | None = None,
              schedule: object = None) -> None:
        """Rank every key's futures."""
        super().reset(spec, capacity_slots, trace, schedule)
        if trace is None or schedule is None:
            raise ConfigError("belady (an offline upper bound) needs the trace and the schedule")
        n_keys = spec.num_expert_keys
        times, keys = access_stream(trace.expert_ids, schedule, spec.num_experts)  # [N] each
        # events grouped by key, in time order (times are sorted: a stable sort by key suffices;
        # 16-bit keys let numpy use a radix sort)
        small = keys.astype(np.int16 if n_keys < 2**15 else np.int32)
        by_key = np.argsort(small, kind="stable")
        following = np.full(times.shape[0], -1, dtype=np.int64)  # [N] next event of the key
        same = keys[by_key[1:]] == keys[by_key[:-1]]
        following[by_key[:-1][same]] = by_key[1:][same]
        from moe_offload_lab.policies.replacement import _belady_kernel as kernel  # numba

        ranks = kernel.future_ranks(times, keys, following, n_keys)  # [N]
        bounds = np.searchsorted(keys[by_key], np.arange(n_keys + 1))  # [L*E + 1]
        flat_times, flat_ranks = times[by_key].tolist(), ranks[by_key].tolist()
        never = times.shape[0] + 1  # rank of "never used again", plus (n_keys - key)
        self._times = [flat_times[bounds[i]:bounds[i + 1]] for i in range(n_keys)]
        self._ranks = [flat_ranks[bounds[i]:bounds[i + 1]] + [never + n_keys - i]
                       for i in range(n_keys)]  # per key: rank per cursor, then "never"
        self._cursor = [0] * n_keys  # index of each key's next use after now
        self._now = -1
        self._rank_of: dict[int, int] = {}  # resident key -> rank of its current future
        self._heap: list[tuple[int, int]] = []  # (-rank, key): furthest future first
        self._decided_at = -1
        self._admitted: dict[int, bool] = {}

    def _future(self, key: int) -> int:
        """Rank of ``key``'s future after now (advancing its cursor)."""
        times, cursor, now = self._times[key], self._cursor[key], self._now
        while cursor < len(times) and times[cursor] <= now:
            cursor += 1
        self._cursor[key] = cursor
        return self._ranks[key][cursor]

    def _track(self, key: int) -> None:
        rank = self._future(key)
        if self._rank_of.get(key) != rank:
            self._rank_of[key] = rank
            heapq.heappush(self._heap, (-rank, key))

    def on_access(self, ctx: LayerContext) -> None:
        """Advance time; accessed residents get their new future."""
        self._now = ctx.step * self.num_layers + ctx.layer
        tracked = self._rank_of
        for key in ctx.keys:
            if key in tracked:
                self._track(key)

    def on_insert(self, key: int) -> None:
        """Track the new resident's future."""
        self._track(key)

    def on_remove(self, key: int) -> None:
        """Forget ``key`` (its heap entries go stale)."""
        self._rank_of.pop(key, None)

    def _furthest(self, count: int, keep: Collection[int], soft: Collection[int],
                  exclude: Collection[int]) -> list[tuple[int, int]]:
        """Up to ``count`` (rank, key) of evictable residents, furthest future first."""
        heap, rank_of = self._heap, self._rank_of
        found: list[tuple[int, int]] = []
        popped: list[tuple[int, int]] = []
        seen: set[int] = set()
        while heap and len(found) < count:
            item = heapq.heappop(heap)
            key = item[1]
            if rank_of.get(key) != -item[0] or key in seen:
                continue  # stale, or a duplicate left by an evict-and-refetch: drop it
            seen.add(key)
            popped.append(item)
            if key not in keep and key not in soft and key not in exclude:
                found.append((-item[0], key))
        for item in popped:
            heapq.heappush(heap, item)
        return found

    def victims(self, view: CacheView, need: int, layer: int, keep: Collection[int],
                soft: Collection[int], out: list[int]) -> None:
        """Residents used furthest in the future first."""
        target = len(out) + need
        for _, key in self._furthest(need, keep, soft, out):
            out.append(key)
        if len(out) < target and len(self._rank_of) < len(view.resident):
            self._fallback(view, target, layer, keep, soft, out, self._rank_of)

    def admit(self, key: int, ctx: LayerContext) -> bool:
        """MIN with bypass: cache the layer's misses that are used sooner than what they evict."""
        if not self.params.bypass:
            return True
        if self._decided_at != self._now:
            self._decide(ctx)
        return self._admitted.get(key, True)

    def _decide(self, ctx: LayerContext) -> None:
        self._decided_at = self._now
        self._admitted.clear()
        view = ctx.view
        resident, in_flight = view.resident, view.in_flight
        missing = sorted((self._future(key), key) for key in ctx.keys
                         if key not in resident and key not in in_flight)  # soonest first
        free = view.free_slots(ctx.layer)
        victims = self._furthest(max(len(missing) - max(free, 0), 0), ctx.keys, (), ())
        j = 0
        for rank, key in missing:
            if free > 0:
                free -= 1
                self._admitted[key] = True
            elif j < len(victims) and victims[j][0] > rank:  # the victim is used later
                j += 1
                self._admitted[key] = True
            else:
                self._admitted[key] = False
