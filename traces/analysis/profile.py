"""A routing profile: the few statistics that say how cacheable and predictable a trace is.

:func:`routing_profile` is what ``moe-trace compare`` prints side by side, what the preset table
of ``traces/README.md`` reports against published figures, and what ``moe-trace fit`` matches.
Definitions (``S_t`` is token ``t``'s top-k set at a layer, ``T_t`` its top-1 expert, pairs are
successive tokens of one request):

- ``lru_hit_ratio`` / ``belady_hit_ratio``: global LRU and Belady (MIN) hit ratio of the
  (layer, expert) access stream with a fraction of all ``L * E`` keys cached
  (:mod:`traces.analysis.cache_curves`; HybriMoE's "global LRU" measure at batch 1);
  ``lru_curve`` the LRU hit ratio at 41 evenly spaced fractions.
- ``adjacent_overlap``: ``observed`` = mean ``|S_t ∩ S_{t+1}| / k``; ``chance`` = the same for two
  tokens drawn independently from the trace's popularity, ``sum_e (n_e / T)^2 / k``; ``ratio``.
- ``top1_reuse``: ``observed`` = ``P(T_{t+1} = T_t)``; ``chance`` = ``sum_e q_e^2`` with ``q``
  the top-1 popularity; ``ratio``.
- ``lagged_overlap``: the overlap ratio for tokens ``m`` apart in a request (``m`` = 1, 4, 16,
  64): request-level locality shows as a ratio that stays above 1 at long lags.
- ``top1_transition``: the most frequent top-1 successor at layer ``l + 1`` of each top-1 expert
  at layer ``l``, counted on the first half of the tokens and scored on the second half
  (``accuracy``), against the most popular top-1 expert of the first half (``popular``) and
  ``1 / E`` (``chance``).
- ``hottest_share``: per layer the busiest expert's share of the selections over an even share
  ``1 / E`` (1.0 = perfectly balanced).
- ``entropy_bits``, ``cross_layer_mi_top1`` (d = 1), ``lookahead_accuracy`` (d = 1, when the trace
  has lookahead columns): as in :func:`traces.analysis.report.compute_stats`.

Per-layer values are lists (``per_layer``) next to their mean; every number is rounded to 6
decimals; undefined values are ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
from moe_offload_lab.traces.analysis._common import (
    json_float,
    json_list,
    nanmean,
    routing,
    set_overlap,
)
from moe_offload_lab.traces.analysis.cache_curves import belady_hit_ratios, lru_pass
from moe_offload_lab.traces.analysis.entropy import entropy_bits, expert_counts
from moe_offload_lab.traces.analysis.information import (
    top1_cross_layer_mutual_information,
    top1_experts,
)
from moe_offload_lab.traces.analysis.lookahead import lookahead_accuracy
from moe_offload_lab.traces.errors import TraceError
from moe_offload_lab.traces.format import Trace

FRACTIONS: tuple[float, ...] = (0.25, 0.5, 0.75)
LAGS: tuple[int, ...] = (1, 4, 16, 64)
CURVE_POINTS = 40  # the LRU curve is reported at fractions 0, 1/40, ..., 1


@numba.njit(cache=True, nogil=True)
def _pair_overlap(ids, earlier, later):  # pragma: no cover - compiled
    """Summed |S_a ∩ S_b| per layer over the row pairs (earlier[i], later[i]) -> int64 [L]."""
    n_layers = ids.shape[1]
    out = np.zeros(n_layers, np.int64)
    for i in range(earlier.shape[0]):
        for layer in range(n_layers):
            out[layer] += set_overlap(ids[earlier[i], layer], ids[later[i], layer])
    return out


def request_order(request_id: np.ndarray) -> np.ndarray:
    """Row indices grouping the rows by request (stable: row order kept within a request)."""
    return np.argsort(np.asarray(request_id), kind="stable")


def lag_pairs(request_id: np.ndarray, lag: int,
              order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs ``(earlier, later)`` of tokens ``lag`` apart within one request (int64)."""
    order = request_order(request_id) if order is None else order
    rid = np.asarray(request_id)[order]
    if rid.size <= lag:
        empty = np.empty(0, np.int64)
        return empty, empty
    same = rid[lag:] == rid[:-lag]
    return order[:-lag][same].astype(np.int64), order[lag:][same].astype(np.int64)


def overlap_ratio(trace: Trace, lag: int = 1, *, counts: np.ndarray | None = None,
                  order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: the observed mean ``|S_t ∩ S_{t+lag}| / k`` and the chance value ([L] each;
    NaN without pairs)."""
    ids = routing(trace)
    k = trace.spec.top_k
    counts = expert_counts(trace) if counts is None else counts
    earlier, later = lag_pairs(trace.request_id, lag, order)
    chance = ((counts / max(trace.num_tokens, 1)) ** 2).sum(axis=1) / k
    if earlier.size == 0:
        return np.full(ids.shape[1], np.nan), chance
    observed = _pair_overlap(ids, earlier, later) / (earlier.size * k)
    return observed, chance


def top1_reuse(trace: Trace, *, top1: np.ndarray | None = None,
               order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: ``P(T_{t+1} = T_t)`` over adjacent pairs and its chance value ([L] each)."""
    top1 = top1_experts(trace) if top1 is None else top1
    n_experts = trace.spec.num_experts
    earlier, later = lag_pairs(trace.request_id, 1, order)
    share = np.stack([np.bincount(top1[:, l], minlength=n_experts) for l in
                      range(top1.shape[1])]) / max(trace.num_tokens, 1)  # [L, E]
    chance = (share**2).sum(axis=1)
    if earlier.size == 0:
        return np.full(top1.shape[1], np.nan), chance
    return (top1[earlier] == top1[later]).mean(axis=0), chance


def top1_transition(trace: Trace, *, top1: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per source layer ``l = 0 .. L-2``: accuracy of the first half's most frequent top-1
    successor on the second half, and of the first half's most popular top-1 expert ([L-1])."""
    top1 = top1_experts(trace) if top1 is None else top1
    n_tokens, n_layers = top1.shape
    n_experts = trace.spec.num_experts
    half = n_tokens // 2
    accuracy = np.full(max(n_layers - 1, 0), np.nan)
    popular = np.full(max(n_layers - 1, 0), np.nan)
    if half == 0 or n_tokens - half == 0:
        return accuracy, popular
    first, second = top1[:half], top1[half:]
    for layer in range(n_layers - 1):
        table = np.bincount(first[:, layer] * n_experts + first[:, layer + 1],
                            minlength=n_experts**2).reshape(n_experts, n_experts)
        best_overall = int(np.bincount(first[:, layer + 1], minlength=n_experts).argmax())
        successor = np.where(table.sum(axis=1) > 0, table.argmax(axis=1), best_overall)
        accuracy[layer] = float((successor[second[:, layer]] == second[:, layer + 1]).mean())
        popular[layer] = float((second[:, layer + 1] == best_overall).mean())
    return accuracy, popular


def hottest_share(counts: np.ndarray) -> np.ndarray:
    """Per layer the busiest expert's share of selections over an even share ``1 / E`` ([L])."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts.max(axis=1) / total * counts.shape[1], np.nan)


def _block(values: np.ndarray) -> dict[str, Any]:
    return {"mean": json_float(nanmean(values)), "per_layer": json_list(values)}


def _ratio(observed: np.ndarray, chance: np.ndarray) -> dict[str, Any]:
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(chance > 0, observed / chance, np.nan)
    return {"observed": json_float(nanmean(observed)), "chance": json_float(nanmean(chance)),
            "ratio": json_float(nanmean(ratio)), "per_layer_ratio": json_list(ratio)}


def routing_profile(trace: Trace, *, fractions: Sequence[float] = FRACTIONS,
                    lags: Sequence[int] = LAGS, belady: bool = True) -> dict[str, Any]:
    """The profile of ``trace`` (see the module docstring for every key)."""
    if trace.num_tokens == 0:
        raise TraceError("cannot profile an empty trace (no tokens)")
    spec = trace.spec
    n_keys = spec.num_expert_keys
    sizes = [max(1, int(np.floor(f * n_keys + 0.5))) for f in fractions]
    lru = lru_pass(trace, with_next_uses=belady)
    curve = lru.hit_ratio_curve()
    counts = expert_counts(trace)
    order = request_order(trace.request_id)
    top1 = top1_experts(trace)
    observed, chance = overlap_ratio(trace, 1, counts=counts, order=order)
    lagged = {}
    for lag in lags:
        obs, ch = overlap_ratio(trace, lag, counts=counts, order=order)
        lagged[str(lag)] = _ratio(obs, ch)["ratio"]
    reuse, reuse_chance = top1_reuse(trace, top1=top1, order=order)
    transition, popular = top1_transition(trace, top1=top1)
    mi = top1_cross_layer_mutual_information(trace, 1).get(1, np.full(0, np.nan))
    ahead = lookahead_accuracy(trace).get(1) if 1 in trace.lookahead else None
    out: dict[str, Any] = {
        "trace": {"model": spec.name, "tokens": trace.num_tokens,
                  "requests": int(np.unique(trace.request_id).size),
                  "moe_layers": spec.num_moe_layers, "experts": spec.num_experts,
                  "top_k": spec.top_k},
        "lru_hit_ratio": {format(f, "g"): json_float(curve[c])
                          for f, c in zip(fractions, sizes, strict=True)},
        "lru_curve": {"fraction": [round(i / CURVE_POINTS, 4) for i in range(CURVE_POINTS + 1)],
                      "hit_ratio": json_list(curve[[int(np.floor(i / CURVE_POINTS * n_keys + 0.5))
                                                    for i in range(CURVE_POINTS + 1)]])},
        "belady_hit_ratio": {},
        "adjacent_overlap": _ratio(observed, chance),
        "top1_reuse": _ratio(reuse, reuse_chance),
        "lagged_overlap_ratio": lagged,
        "top1_transition": {"accuracy": json_float(nanmean(transition)),
                            "popular": json_float(nanmean(popular)),
                            "chance": json_float(1.0 / spec.num_experts),
                            "per_layer": json_list(transition)},
        "hottest_share": {**_block(hottest_share(counts)),
                          "max": json_float(np.nanmax(hottest_share(counts)))},
        "entropy_bits": _block(entropy_bits(counts)),
        "cross_layer_mi_top1": _block(mi),
        "lookahead_accuracy": None if ahead is None else _block(ahead),
    }
    if belady:
        ratios = belady_hit_ratios(trace, sizes, next_uses=lru.next_uses)
        out["belady_hit_ratio"] = {format(f, "g"): json_float(r)
                                   for f, r in zip(fractions, ratios, strict=False)}
    return out
