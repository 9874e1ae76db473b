"""One JSON-ready summary of a trace: :func:`compute_stats`.

The layout (schema ``moe-trace-stats/1``) is stable; see :func:`compute_stats`. Every number is
rounded to 6 decimals, per-layer lists have one entry per MoE layer (cross-layer mutual
information: one per source layer, ``L - d`` entries) and hold ``None`` where a value is
undefined. Definitions live in the docstrings of :mod:`traces.analysis.entropy`,
:mod:`~traces.analysis.information`, :mod:`~traces.analysis.locality`,
:mod:`~traces.analysis.cache_curves` and :mod:`~traces.analysis.lookahead`.

Cache sizes: a fraction ``f`` of the key universe ``K = L * E`` means ``C = max(1, round(f * K))``
keys, rounding halves up; the result keys are ``format(f, "g")`` (``"0.05"``, ``"0.5"``, ``"1"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from moe_offload_lab.traces.analysis._common import json_float, json_list, nanmean
from moe_offload_lab.traces.analysis.cache_curves import belady_hit_ratios, lru_pass
from moe_offload_lab.traces.analysis.entropy import entropy_bits, expert_counts, power_law_alpha
from moe_offload_lab.traces.analysis.information import (
    adjacent_joint,
    adjacent_mutual_information,
    conditional_entropy,
    cross_layer_mutual_information,
    layer_major_routing,
    top1_cross_layer_mutual_information,
)
from moe_offload_lab.traces.analysis.locality import (
    adjacent_reuse_ratio,
    experts_for_95pct,
    top_half_traffic,
)
from moe_offload_lab.traces.analysis.lookahead import lookahead_accuracy
from moe_offload_lab.traces.errors import ConfigError, TraceError
from moe_offload_lab.traces.format import DECODE, PREFILL, Trace
from tqdm import tqdm

SCHEMA = "moe-trace-stats/1"
DEFAULT_LRU_FRACTIONS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))
DEFAULT_BELADY_FRACTIONS: tuple[float, ...] = (0.25, 0.5)


def cache_keys_for(fraction: float, num_keys: int) -> int:
    """Cache size in keys for a fraction of the key universe: ``max(1, round_half_up(f * K))``."""
    return max(1, int(math.floor(fraction * num_keys + 0.5)))


def _check_fractions(name: str, fractions: Sequence[float]) -> list[float]:
    out = []
    for f in fractions:
        try:
            value = float(f)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {f!r} is not a number") from None
        if not (0.0 < value <= 1.0):
            raise ConfigError(f"{name}: cache fractions must lie in (0, 1], got {f!r}")
        out.append(value)
    return out


def _layer_block(values: np.ndarray) -> dict[str, Any]:
    return {"per_layer": json_list(values), "mean": json_float(nanmean(values))}


def compute_stats(trace: Trace, *,
                  lru_fractions: Sequence[float] = DEFAULT_LRU_FRACTIONS,
                  belady_fractions: Sequence[float] = DEFAULT_BELADY_FRACTIONS,
                  max_distance: int = 3, context_layers: int = 3,
                  progress: bool = False) -> dict[str, Any]:
    """Every analysis measure of a trace as one JSON-serialisable dict.

    Top-level keys (always all present, in this order): ``schema``, ``trace``, ``entropy_bits``,
    ``power_law_alpha``, ``traffic``, ``mutual_information_bits``, ``conditional_entropy_bits``,
    ``adjacent_reuse_ratio``, ``reuse_distance_tokens``, ``lru_hit_ratio``,
    ``lru_hit_ratio_curve``, ``belady_hit_ratio``, ``lookahead_accuracy``.

    - ``mutual_information_bits.cross_layer`` (slot pairs) and ``cross_layer_top1`` (top-1
      experts) have one entry per distance ``"1" .. max_distance``
      below ``L``; ``conditional_entropy_bits`` one per context length ``"1" .. context_layers``
      below ``L``, each with ``per_layer`` (None for ``l < c``), ``mean``, ``exploitable_bits``
      (mean of ``H(X_l) - H(X_l | context)`` over ``l >= c``) and ``contexts`` (the largest number
      of distinct contexts over the layers -- compare it with the token count to judge the
      plug-in bias).
    - ``lru_hit_ratio`` / ``belady_hit_ratio`` map ``format(f, "g")`` to the hit ratio at
      ``cache_keys_for(f, K)`` keys; ``lru_hit_ratio_curve`` is the whole LRU curve for
      ``C = 0 .. K``.
    - ``lookahead_accuracy`` is ``{}`` when the trace has no lookahead columns.

    The LRU/Belady pass runs in a worker thread next to the other measures (the numba kernels
    release the GIL). Raises :class:`~traces.errors.TraceError` for an empty trace and
    :class:`~traces.errors.ConfigError` for bad arguments.
    """
    lru_fracs = _check_fractions("lru_fractions", lru_fractions)
    belady_fracs = _check_fractions("belady_fractions", belady_fractions)
    for name, value in (("max_distance", max_distance), ("context_layers", context_layers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if trace.num_tokens == 0:
        raise TraceError("cannot analyse an empty trace (no tokens)")
    spec = trace.spec
    n_layers, n_experts, k = spec.num_moe_layers, spec.num_experts, spec.top_k
    n_keys = n_layers * n_experts
    lru_sizes = [cache_keys_for(f, n_keys) for f in lru_fracs]
    belady_sizes = [cache_keys_for(f, n_keys) for f in belady_fracs]

    def cache_work() -> tuple[Any, np.ndarray]:
        lru = lru_pass(trace, with_next_uses=bool(belady_sizes))
        belady = (belady_hit_ratios(trace, belady_sizes, next_uses=lru.next_uses)
                  if belady_sizes else np.empty(0))
        return lru, belady

    steps = ["counts", "cross-layer MI", "adjacent tokens", "conditional entropy", "lookahead",
             "cache curves"]
    bar = tqdm(total=len(steps), desc="trace stats", unit="step", disable=not progress)

    def step(name: str) -> None:
        bar.set_postfix_str(name)

    with ThreadPoolExecutor(max_workers=1) as pool:
        cache_future = pool.submit(cache_work)
        try:
            step("counts")
            counts = expert_counts(trace)
            entropy = entropy_bits(counts)
            bar.update()
            step("cross-layer MI")
            layers = layer_major_routing(trace)
            cross = cross_layer_mutual_information(trace, max_distance, layers=layers)
            cross_top1 = top1_cross_layer_mutual_information(trace, max_distance)
            bar.update()
            step("adjacent tokens")
            adj_joint = adjacent_joint(trace, layers=layers)
            adj_mi = adjacent_mutual_information(trace, joint=adj_joint)
            reuse_ratio = adjacent_reuse_ratio(trace, joint=adj_joint, counts=counts)
            bar.update()
            step("conditional entropy")
            cond = conditional_entropy(trace, context_layers, marginal=entropy, layers=layers)
            del layers
            bar.update()
            step("lookahead")
            lookahead = lookahead_accuracy(trace)
            bar.update()
            step("cache curves")
            lru, belady = cache_future.result()
            bar.update()
        finally:
            bar.close()

    curve = lru.hit_ratio_curve()
    reuse = lru.reuse_distance_tokens()
    phase = trace.phase
    return {
        "schema": SCHEMA,
        "trace": {
            "model": spec.name,
            "tokens": trace.num_tokens,
            "requests": int(np.unique(trace.request_id).size),
            "prefill_tokens": int(np.count_nonzero(phase == PREFILL)),
            "decode_tokens": int(np.count_nonzero(phase == DECODE)),
            "moe_layers": n_layers,
            "experts": n_experts,
            "top_k": k,
            "lookahead_distances": [int(d) for d in trace.lookahead_distances],
        },
        "entropy_bits": {"per_layer": json_list(entropy), "mean": json_float(nanmean(entropy)),
                         "max": json_float(math.log2(n_experts))},
        "power_law_alpha": _layer_block(power_law_alpha(counts)),
        "traffic": {"top_half_share": _layer_block(top_half_traffic(counts)),
                    "experts_for_95pct": _layer_block(experts_for_95pct(counts))},
        "mutual_information_bits": {
            "cross_layer": {str(d): _layer_block(values) for d, values in cross.items()},
            "cross_layer_top1": {str(d): _layer_block(v) for d, v in cross_top1.items()},
            "adjacent_token": _layer_block(adj_mi),
        },
        "conditional_entropy_bits": {
            str(c): {"per_layer": json_list(result.per_layer),
                     "mean": json_float(nanmean(result.per_layer)),
                     "exploitable_bits": json_float(nanmean(result.exploitable)),
                     "contexts": int(result.contexts.max(initial=0))}
            for c, result in cond.items()
        },
        "adjacent_reuse_ratio": _layer_block(reuse_ratio),
        "reuse_distance_tokens": {name: json_float(value) for name, value in reuse.items()},
        "lru_hit_ratio": {format(f, "g"): json_float(curve[size])
                          for f, size in zip(lru_fracs, lru_sizes, strict=True)},
        "lru_hit_ratio_curve": {"cache_keys": list(range(n_keys + 1)),
                                "hit_ratio": json_list(curve)},
        "belady_hit_ratio": {format(f, "g"): json_float(ratio)
                             for f, ratio in zip(belady_fracs, belady, strict=True)},
        "lookahead_accuracy": {str(d): _layer_block(acc) for d, acc in lookahead.items()},
    }
