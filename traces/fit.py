"""Fit the hidden-state generator to a real trace: ``moe-trace fit REAL.parquet -o preset.yaml``.

A user with a short real trace gets a preset that synthesises long traces of the same model. The
fit estimates every part of the model in :mod:`traces.synth.generate` from the trace, each from
the statistic it controls, holding the others fixed (all simulations use common random numbers):

1. **Request structure**: request count, prompt and decode lengths (a fixed length when all
   requests agree, else a lognormal with the observed mean and log-spread, clipped to the
   observed range).
2. **Router geometry** (which expert follows which): layer 0's router rows are random; layer
   ``l``'s rows are the least-squares solution of ``W_{l-1} W_l^T = PMI_l`` -- the pointwise
   mutual information of (expert at ``l-1``, expert at ``l``) over all slot pairs of a token,
   additively smoothed and shrunk toward 0 by its sampling noise (James-Stein) -- normalised to
   unit length. Experts that follow each other get router rows that point the same way.
3. **Popularity**: the router biases, by iterative proportional fitting of the selection shares
   of sampled states to the trace's (log shares shrunk toward the layer mean by their sampling
   noise, so a short trace's noise is not copied as skew).
4. **Cross-layer dependence**: the state correlation between consecutive layers, per layer,
   bisected so that the slot-pair mutual information of simulated layer pairs equals the
   trace's at the same token count (the plug-in bias cancels). With lookahead columns in the
   trace the correlation comes from their accuracy instead (the mechanism they measure).
5. **Temporal reuse**: the correlation of a layer's state between adjacent tokens, per layer,
   bisected to the trace's adjacent-token overlap ``|S_t ∩ S_{t+1}| / k``; it is split into the
   request share ``a`` and per-layer token persistence ``phi_l`` given the layer persistence.
6. **Request share**: ``a`` bisected so that whole generated traces of the trace's length match
   its LRU hit ratio with 75% of the (layer, expert) keys cached (a large cache hits on reuse
   many tokens apart: long-range, request-level locality).
7. **Router noise**: the whole fit repeats for a few noise levels and keeps the one whose
   generated traces come closest to the trace's top-1 transition predictability (noise blurs
   the top-1 expert first), its LRU hit ratio at 75% and its cross-layer information two layers
   apart (d = 2).
8. **Gates**: normalised over the top-k or shares of a softmax over all experts, as in the trace;
   a temperature per layer matching the mean top-1 gate.
9. **Features** (when the trace has them): the width, and a feature noise matching how well a
   ridge read-out from a layer's features names its top-k (fit on the first half of the tokens,
   scored on the second).

The result is a preset YAML (every scalar and per-layer parameter, with the fit's report as
comments) and a ``.npz`` beside it holding the router rows and biases. A trace that is too short
(fewer than :data:`MIN_TOKENS` tokens or four selections per expert and layer), has a single
request, or has no two tokens in one request cannot be fitted: one ``ConfigError``, nothing
written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from moe_offload_lab.traces.analysis.cache_curves import lru_pass
from moe_offload_lab.traces.analysis.entropy import expert_counts
from moe_offload_lab.traces.analysis.information import mutual_information_bits
from moe_offload_lab.traces.analysis.profile import lag_pairs, overlap_ratio, top1_transition
from moe_offload_lab.traces.atomic import atomic_path
from moe_offload_lab.traces.catalog import available, load_model
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.synth import kernels
from moe_offload_lab.traces.synth.config import LengthDist, SynthConfig
from moe_offload_lab.traces.synth.generate import generate
from moe_offload_lab.traces.synth.structure import _MonteCarlo

MIN_TOKENS = 256
MIN_SELECTIONS_PER_EXPERT = 4
NOISE_LEVELS = (0.0, 0.03, 0.1, 0.3)
LRU_FRACTION = 0.75  # the request share is fitted to the LRU hit ratio at this cache fraction
_REPEATS = 4  # independent simulations averaged per matched statistic
_BISECTION_STEPS = 14


@dataclass
class FitResult:
    """A fitted preset: the YAML mapping, the router rows [L, E, D] and biases [L, E], and the
    statistics the fit matched (``target``) next to what the fitted model gives (``fitted``)."""

    config: dict[str, Any]
    router: np.ndarray
    bias: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


# ---- checks -------------------------------------------------------------------------------------
def check_fittable(trace: Trace, where: str = "trace") -> None:
    """ConfigError (one line) when the trace cannot support a fit."""
    spec = trace.spec
    n = trace.num_tokens
    per_expert = n * spec.top_k / spec.num_experts
    if n < MIN_TOKENS or per_expert < MIN_SELECTIONS_PER_EXPERT:
        need = max(MIN_TOKENS, int(np.ceil(MIN_SELECTIONS_PER_EXPERT * spec.num_experts
                                           / spec.top_k)))
        raise ConfigError(f"{where}: too short to fit ({n} tokens); a fit of {spec.name} needs "
                          f"at least {need} tokens ({MIN_SELECTIONS_PER_EXPERT} selections per "
                          f"expert and layer)")
    requests = np.unique(trace.request_id).size
    if requests < 2:
        raise ConfigError(f"{where}: a single request; a fit needs at least two to estimate the "
                          f"request structure (split a long capture into requests when "
                          f"importing, e.g. moe-trace import --lengths)")
    if lag_pairs(trace.request_id, 1)[0].size == 0:
        raise ConfigError(f"{where}: no request has two tokens, so adjacent-token reuse cannot "
                          f"be fitted")


# ---- small simulation helpers -------------------------------------------------------------------
def _unit_rows(matrix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    weak = norms[..., 0] < 1e-9
    if weak.any():  # no information: a random direction
        matrix = matrix.copy()
        matrix[weak] = rng.standard_normal((int(weak.sum()), matrix.shape[-1]))
        norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / norms


def _route(states: np.ndarray, router: np.ndarray, bias: np.ndarray, sigma: float,
           noise: np.ndarray, k: int) -> np.ndarray:
    """Top-k ids [N, k] of ``states`` [N, D] under one layer's router [E, D], bias [E]."""
    return kernels.route_states(np.ascontiguousarray(states), np.ascontiguousarray(router),
                                np.ascontiguousarray(bias), float(sigma), noise, k)


def _lru_at(curve: np.ndarray, fraction: float) -> float:
    """LRU hit ratio at a fraction of the keys from a curve over sizes 0 .. K."""
    keys = curve.size - 1
    return float(curve[max(1, int(np.floor(fraction * keys + 0.5)))])


def _slot_pair_joint(a: np.ndarray, b: np.ndarray, n_experts: int) -> np.ndarray:
    """Counts [E, E] of (expert in a row of a, expert in the same row of b) over all k x k slot
    pairs of two [N, k] routings."""
    cells = (a[:, :, None] * n_experts + b[:, None, :]).ravel()
    return np.bincount(cells, minlength=n_experts**2).reshape(n_experts, n_experts)


def _pair_mi(a: np.ndarray, b: np.ndarray, n_experts: int) -> float:
    """Plug-in mutual information (bits) over all slot pairs of two [N, k] routings."""
    return float(mutual_information_bits(_slot_pair_joint(a, b, n_experts)))


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a_i ∩ b_i| / k over the rows of two [N, k] routings."""
    return float((a[:, :, None] == b[:, None, :]).any(axis=2).mean())


def _bisect(function: Callable[[float], float], wanted: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with function(x) ~ wanted for an increasing function (clamped)."""
    if function(lo) >= wanted:
        return lo
    if function(hi) <= wanted:
        return hi
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if function(mid) < wanted:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


class _Sampler:
    """Common random numbers for the pair simulations: states, fresh parts and router noise."""

    def __init__(self, n: int, dim: int, n_experts: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0xF17])
        self.h = rng.standard_normal((_REPEATS, n, dim))  # [R, N, D]
        self.fresh = rng.standard_normal((_REPEATS, n, dim))
        self.noise_a = rng.standard_normal((_REPEATS, n, n_experts))  # [R, N, E]
        self.noise_b = rng.standard_normal((_REPEATS, n, n_experts))

    def pair(self, r: int, corr: float) -> tuple[np.ndarray, np.ndarray]:
        """Two state sets [N, D] with correlation ``corr`` (row by row)."""
        return self.h[r], corr * self.h[r] + np.sqrt(max(0.0, 1 - corr * corr)) * self.fresh[r]


# ---- the fit ------------------------------------------------------------------------------------
def fit_trace(trace: Trace, *, dim: int = 16, seed: int = 0, where: str = "trace",
              progress: Callable[[str], None] | None = None) -> FitResult:
    """Fit the generator to ``trace`` (see the module docstring); deterministic per ``seed``."""
    check_fittable(trace, where)
    say = progress or (lambda _message: None)
    n_experts = trace.spec.num_experts
    if dim < 1:
        raise ConfigError("the state dimension must be at least 1")
    width = 0 if trace.features is None else min(int(trace.features.shape[2]), dim)
    ids = np.ascontiguousarray(trace.expert_ids, dtype=np.int64)  # [T, L, k]
    n_tokens = ids.shape[0]
    rng = np.random.default_rng([seed, 0xF1])
    sampler = _Sampler(n_tokens, dim, n_experts, seed)
    counts = expert_counts(trace)  # [L, E]
    real = _real_statistics(trace, ids, counts)
    say("router geometry")
    router = _geometry(ids, n_experts, dim, rng)
    best = None
    with tempfile.TemporaryDirectory(prefix="moe-fit-") as folder:  # candidates' structures
        scratch = Path(folder)
        for sigma in NOISE_LEVELS:
            say(f"router noise {sigma}")
            candidate = _fit_at_noise(trace, ids, counts, real, router, sigma, sampler, seed,
                                      scratch)
            if best is None or candidate["score"] < best["score"]:
                best = candidate
        assert best is not None
        gates, temperature = _gates(trace, router, best["bias"], best["sigma"], sampler)
        features = _features(trace, width, best, router, seed, scratch) if width else None
    config = _config(trace, best, dim, gates, temperature, width, features, seed)
    report = {"target": {"pair_mi_d1": real["pair_mi"].tolist(),
                         "pair_mi_d2": real["pair_mi_d2"],
                         "adjacent_overlap": real["overlap"].tolist(),
                         "lru_hit_ratio_0.75": real["lru75"],
                         "top1_transition": real["transition"]},
              "fitted": {"pair_mi_d2": best["mi_d2"], "lru_hit_ratio_0.75": best["lru75"],
                         "top1_transition": best["transition"], "router_noise": best["sigma"],
                         "noise_levels_tried": list(NOISE_LEVELS)}}
    return FitResult(config, router, best["bias"], report)


def _real_statistics(trace: Trace, ids: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    n_layers, n_experts = ids.shape[1], trace.spec.num_experts
    observed, _ = overlap_ratio(trace, 1, counts=counts)
    pair_mi = np.array([_pair_mi(ids[:, l - 1], ids[:, l], n_experts)
                        for l in range(1, n_layers)])
    d2 = [_pair_mi(ids[:, l - 2], ids[:, l], n_experts) for l in range(2, n_layers)]
    lru75 = _lru_at(lru_pass(trace).hit_ratio_curve(), LRU_FRACTION)
    look = None
    if 1 in trace.lookahead:
        from moe_offload_lab.traces.analysis.lookahead import lookahead_accuracy

        look = lookahead_accuracy(trace)[1]
    transition = float(np.nanmean(top1_transition(trace)[0])) if n_layers > 1 else 0.0
    return {"overlap": observed, "pair_mi": pair_mi, "pair_mi_d2": float(np.mean(d2)) if d2
            else None, "lru75": lru75, "lookahead": look, "transition": transition}


def _geometry(ids: np.ndarray, n_experts: int, dim: int, rng: np.random.Generator,
              smoothing: float = 1.0) -> np.ndarray:
    """Router rows [L, E, D] along the chain of consecutive layers (step 2).

    Layer 0's rows are random. Expert ``f`` of layer ``l`` gets the direction of the experts of
    layer ``l - 1`` that precede it more often than their popularity explains: the mean of their
    rows weighted by ``max(0, P(e at l-1 | f at l) - P(e at l-1))`` (slot pairs of one token,
    additively smoothed); the layer's rows are then centred and whitened (so they spread like
    random rows instead of contracting layer after layer) and normalised.
    """
    n_layers = ids.shape[1]
    router = np.empty((n_layers, n_experts, dim))
    router[0] = _unit_rows(rng.standard_normal((n_experts, dim)), rng)
    for layer in range(1, n_layers):
        joint = _slot_pair_joint(ids[:, layer - 1], ids[:, layer], n_experts)
        joint = joint.astype(np.float64) + smoothing  # [E_prev, E]
        before = joint.sum(axis=1) / joint.sum()  # [E_prev] P(e at l-1)
        given = joint / joint.sum(axis=0, keepdims=True)  # [E_prev, E] P(e at l-1 | f at l)
        weights = np.maximum(given - before[:, None], 0.0)  # [E_prev, E]
        rows = weights.T @ router[layer - 1]  # [E, D]
        # Averaging contracts the rows toward a common direction layer after layer; centre and
        # whiten them (isotropic second moment, as random rows have) before normalising.
        rows = rows - rows.mean(axis=0)
        cov = rows.T @ rows / n_experts + 1e-9 * np.eye(dim)  # [D, D]
        values, vectors = np.linalg.eigh(cov)
        rows = rows @ vectors @ np.diag(1.0 / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T
        router[layer] = _unit_rows(rows, rng)
    return router


def _fit_bias(router: np.ndarray, counts: np.ndarray, k: int, sigma: float,
              sampler: _Sampler, iterations: int = 25) -> np.ndarray:
    """Router biases [L, E] whose sampled selection shares match the shrunk real shares."""
    n_layers, n_experts = counts.shape
    share = (counts + 0.5) / (counts.sum(axis=1, keepdims=True) + 0.5 * n_experts)
    log_share = np.log(share)
    centre = log_share.mean(axis=1, keepdims=True)
    noise_var = (1.0 / (counts + 0.5)).mean(axis=1, keepdims=True)
    spread = log_share.var(axis=1, keepdims=True)
    shrink = np.clip(1.0 - noise_var / np.maximum(spread, 1e-12), 0.0, 1.0)
    target = centre + shrink * (log_share - centre)  # [L, E]
    target -= np.log(np.exp(target).sum(axis=1, keepdims=True))
    states = sampler.h.reshape(-1, sampler.h.shape[2])
    noise = sampler.noise_a.reshape(-1, n_experts)
    bias = target.copy()
    best, best_error = bias.copy(), np.full(n_layers, np.inf)
    for step in range(iterations):
        rate = 0.7 / (1.0 + step / 6.0)  # decreasing steps: the top-k map is not smooth
        for layer in range(n_layers):
            picked = _route(states, router[layer], bias[layer], sigma, noise, k)
            sim = np.bincount(picked.ravel(), minlength=n_experts) + 0.5
            gap = target[layer] - np.log(sim / sim.sum())
            error = float(np.mean(gap**2))
            if error < best_error[layer]:
                best_error[layer], best[layer] = error, bias[layer]
            bias[layer] = bias[layer] + rate * np.clip(gap, -1.0, 1.0)
        bias -= bias.mean(axis=1, keepdims=True)
    return best - best.mean(axis=1, keepdims=True)


def _fit_at_noise(trace: Trace, ids: np.ndarray, counts: np.ndarray, real: dict[str, Any],
                  router: np.ndarray, sigma: float, sampler: _Sampler, seed: int,
                  scratch: Path) -> dict[str, Any]:
    """Steps 3-6 at one router noise level; returns the parameters and a score (step 7)."""
    n_layers, n_experts = counts.shape
    k = ids.shape[2]
    bias = _fit_bias(router, counts, k, sigma, sampler)

    def routed(layer: int, states: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return _route(states, router[layer], bias[layer], sigma, noise, k)

    def pair_stat(layer_a: int, layer_b: int, corr: float, stat: Callable) -> float:
        values = []
        for r in range(_REPEATS):
            h_a, h_b = sampler.pair(r, corr)
            values.append(stat(routed(layer_a, h_a, sampler.noise_a[r]),
                               routed(layer_b, h_b, sampler.noise_b[r])))
        return float(np.mean(values))

    mi = lambda a, b: _pair_mi(a, b, n_experts)  # noqa: E731
    cross = np.zeros(n_layers)  # state correlation l-1 -> l (entry 0 unused)
    if real["lookahead"] is not None:
        mc = _MonteCarlo(router, bias, np.full(n_layers, sigma), k, seed)
        for layer in range(1, n_layers):
            wanted = real["lookahead"][layer]
            cross[layer] = _bisect(lambda c, l=layer: mc.accuracy(l, c), wanted, 0.0, 1.0)
    else:
        for layer in range(1, n_layers):
            cross[layer] = _bisect(lambda c, l=layer: pair_stat(l - 1, l, c, mi),
                                   real["pair_mi"][layer - 1], 0.0, 1.0)
    adjacent = np.array([_bisect(lambda q, l=layer: pair_stat(l, l, q, _overlap),
                                 real["overlap"][layer], 0.0, 0.995)
                         for layer in range(n_layers)])

    def dynamics(share: float) -> tuple[np.ndarray, np.ndarray]:
        rho = np.clip((cross - share) / (1.0 - share), 0.0, 1.0)
        rho[0] = 0.0
        token = np.clip((adjacent - share) / (1.0 - share), 0.0, 0.99)
        phi = np.zeros(n_layers)
        carried = 0.0
        for layer in range(n_layers):
            r2 = rho[layer] ** 2 if layer else 0.0
            phi[layer] = np.clip((token[layer] - r2 * carried) / (1.0 - r2), 0.0, 0.99) \
                if r2 < 1.0 else 0.0
            carried = r2 * carried + (1.0 - r2) * phi[layer]
        return rho, phi

    lengths = _request_lengths(trace)

    def simulate(share: float) -> list[Trace]:
        rho, phi = dynamics(share)
        cfg = _synth_config(trace, router, bias, sigma, share, rho, phi, lengths, scratch)
        return [generate(cfg, tokens=trace.num_tokens, seed=seed * 1000 + r, features=0)
                for r in range(_REPEATS)]

    def lru75(share: float) -> float:
        return float(np.mean([_lru_at(lru_pass(t).hit_ratio_curve(), LRU_FRACTION)
                              for t in simulate(share)]))

    ceiling = float(min(cross[1:].min(initial=1.0), adjacent.min()))
    share = _bisect(lru75, real["lru75"], 0.0, max(0.0, min(0.9, ceiling)))
    rho, phi = dynamics(share)
    traces = simulate(share)
    achieved_lru = float(np.mean([_lru_at(lru_pass(t).hit_ratio_curve(), LRU_FRACTION)
                                  for t in traces]))
    transition = float(np.mean([np.nanmean(top1_transition(t)[0]) for t in traces]))
    mi_d2 = None
    score = abs(achieved_lru - real["lru75"]) / 0.01 + abs(transition - real["transition"]) / 0.01
    if real["pair_mi_d2"] is not None:
        corr2 = [share + (1 - share) * rho[l - 1] * rho[l] for l in range(2, n_layers)]
        mi_d2 = float(np.mean([pair_stat(l - 2, l, c, mi) for l, c in
                               zip(range(2, n_layers), corr2, strict=False)]))
        score += abs(mi_d2 - real["pair_mi_d2"]) / 0.02
    return {"sigma": sigma, "bias": bias, "share": share, "rho": rho, "phi": phi,
            "score": score, "mi_d2": mi_d2, "lru75": achieved_lru, "transition": transition,
            "lengths": lengths}


# ---- request structure, gates, features ---------------------------------------------------------
def _length_dist(values: np.ndarray) -> LengthDist:
    values = np.asarray(values, dtype=np.float64)
    low, high = int(values.min()), int(values.max())
    if low == high:
        return LengthDist(kind="fixed", mean=float(low), sigma=0.0, min=low, max=high)
    positive = values[values > 0]
    sigma = float(np.std(np.log(positive))) if positive.size > 1 else 0.5
    return LengthDist(kind="lognormal", mean=round(float(values.mean()), 3),
                      sigma=round(max(sigma, 0.05), 4), min=low, max=high)


def _request_lengths(trace: Trace) -> tuple[LengthDist, LengthDist, int]:
    _, index, counts = np.unique(trace.request_id, return_inverse=True, return_counts=True)
    prefill = np.bincount(index.ravel(), weights=(trace.phase == 0), minlength=counts.size)
    prompt = prefill.astype(np.int64)
    return _length_dist(prompt), _length_dist(counts - prompt), int(counts.size)


def _gates(trace: Trace, router: np.ndarray, bias: np.ndarray, sigma: float,
           sampler: _Sampler) -> tuple[str, list[float]]:
    """Gate mode and a temperature per layer matching the mean top-1 gate (step 8)."""
    gates = trace.gate_weights.astype(np.float64)  # [T, L, k]
    sums = gates.sum(axis=2)
    mode = "topk" if np.mean(np.abs(sums - 1.0) < 1e-3) > 0.99 else "all"
    states = sampler.h[0]
    noise = sampler.noise_a[0]
    temperature = []
    k = gates.shape[2]
    for layer in range(router.shape[0]):
        logits = states @ router[layer].T + bias[layer] + sigma * noise  # [N, E]
        top = -np.sort(-logits, axis=1)
        wanted = float(gates[:, layer].max(axis=1).mean())

        def top1_share(log_t: float, top: np.ndarray = top, logits: np.ndarray = logits) -> float:
            scale = np.exp(-log_t)
            pool = logits if mode == "all" else top[:, :k]
            weights = np.exp((pool - top[:, :1]) * scale)
            return float((1.0 / weights.sum(axis=1)).mean())

        # the top-1 share falls as the temperature rises: bisect on -log T
        log_t = -_bisect(lambda x: top1_share(-x), wanted, -np.log(100.0), -np.log(0.01))
        temperature.append(round(float(np.exp(log_t)), 5))
    return mode, temperature


def _readout_accuracy(features: np.ndarray, ids: np.ndarray, n_experts: int) -> float:
    """Ridge read-out from a layer's features to its top-k, fit on the first half of the
    tokens and scored on the second: mean share of the true top-k among the k best scores."""
    n, n_layers, k = ids.shape
    half = n // 2
    scores = []
    for layer in range(n_layers):
        x = np.concatenate([features[:, layer].astype(np.float64), np.ones((n, 1))], axis=1)
        y = np.zeros((n, n_experts))
        np.put_along_axis(y, ids[:, layer], 1.0, axis=1)
        a = x[:half]
        weights = np.linalg.solve(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ y[:half])
        predicted = np.argsort(-(x[half:] @ weights), axis=1)[:, :k]
        scores.append(_overlap(predicted, ids[half:, layer]))
    return float(np.mean(scores))


def _features(trace: Trace, width: int, best: dict[str, Any], router: np.ndarray,
              seed: int, scratch: Path) -> dict[str, Any]:
    """Feature noise matching the real read-out accuracy (step 9)."""
    n_experts = trace.spec.num_experts
    real_ids = np.asarray(trace.expert_ids, dtype=np.int64)
    wanted = _readout_accuracy(trace.features[:, :, :width], real_ids, n_experts)
    cfg = _synth_config(trace, router, best["bias"], best["sigma"], best["share"], best["rho"],
                        best["phi"], best["lengths"], scratch)
    synthetic = generate(cfg.with_overrides(features_width=width), tokens=trace.num_tokens,
                         seed=seed, features=width)
    clean = synthetic.features.astype(np.float64)  # [T, L, F]
    draws = np.random.default_rng([seed, 0xFEA]).standard_normal(clean.shape)
    synth_ids = np.asarray(synthetic.expert_ids, dtype=np.int64)

    def accuracy(log_noise: float) -> float:  # falls as the noise rises
        return _readout_accuracy(clean + np.exp(log_noise) * draws, synth_ids, n_experts)

    log_noise = -_bisect(lambda x: accuracy(-x), wanted, -np.log(100.0), -np.log(1e-3))
    noise = float(np.exp(log_noise))
    return {"noise": round(noise if noise > 1.5e-3 else 0.0, 5), "readout_target": wanted}


def _synth_config(trace: Trace, router: np.ndarray, bias: np.ndarray, sigma: float,
                  share: float, rho: np.ndarray, phi: np.ndarray,
                  lengths: tuple[LengthDist, LengthDist, int], scratch: Path) -> SynthConfig:
    """A SynthConfig of the candidate parameters, its structure in a file under ``scratch``."""
    spec = trace.spec
    digest = hashlib.sha1(router.tobytes() + bias.tobytes()).hexdigest()[:16]
    path = scratch / f"{digest}.npz"
    if not path.is_file():
        np.savez(path, router=router, bias=bias)
    model, overrides = _model_reference(spec)
    return SynthConfig(model=model, name="fit-candidate", model_overrides=overrides,
                       prompt_tokens=lengths[0], decode_tokens=lengths[1], requests=lengths[2],
                       state_dim=router.shape[2], request_share=float(share),
                       token_persistence=tuple(float(v) for v in phi),
                       layer_persistence=tuple(float(v) for v in rho[1:]) or (0.0,),
                       router_noise=(float(sigma),), lookahead_distances=0, features_width=0,
                       structure_file=str(path))


def _model_reference(spec: Any) -> tuple[str, dict[str, Any]]:
    """``model`` and ``model_overrides`` naming ``spec`` through the catalog."""
    if spec.name not in available("model"):
        raise ConfigError(f"model {spec.name!r} is not in conf/model; add its ModelSpec YAML "
                          f"there to fit a preset for it")
    base = load_model(spec.name)
    overrides = {k: v for k, v in spec.to_dict().items() if base.to_dict().get(k) != v}
    return spec.name, overrides


def _round(values: np.ndarray | list[float], digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in values]


def _config(trace: Trace, best: dict[str, Any], dim: int, gates: str,
            temperature: list[float], width: int, features: dict[str, Any] | None,
            seed: int) -> dict[str, Any]:
    prompt, decode, requests = best["lengths"]
    model, overrides = _model_reference(trace.spec)
    distances = max(trace.lookahead_distances, default=3)
    config: dict[str, Any] = {
        "model": model,
        "structure_seed": int(seed),
        "requests": requests,
        "prompt_tokens": dataclasses.asdict(prompt),
        "decode_tokens": dataclasses.asdict(decode),
        "state": {"dim": dim, "request_share": round(float(best["share"]), 4),
                  "token_persistence": _round(best["phi"]),
                  "layer_persistence": _round(best["rho"][1:]) or [0.0]},
        "router": {"noise": float(best["sigma"]), "temperature": temperature, "gates": gates},
        "lookahead": {"distances": int(distances)},
        "features": {"width": width or min(16, dim), "noise": (features or {}).get("noise", 0.0)},
        "structure": {"file": "STRUCTURE"},
    }
    if overrides:
        config["model_overrides"] = overrides
    return config


def _rounded(value: Any) -> Any:
    """Floats rounded to 4 decimals, recursively (for the report in the YAML header)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), 4)
    return value


# ---- writing ------------------------------------------------------------------------------------
def write_preset(result: FitResult, path: str | Path, *, source: str = "",
                 tokens: int = 0, requests: int = 0) -> tuple[Path, Path]:
    """Write ``path`` (YAML) and ``<stem>.npz`` beside it, atomically; returns both paths.

    The structure file is written first; if the YAML cannot be written it is removed again, so a
    failure leaves neither.
    """
    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"the preset is YAML; name it *.yaml, not {path.name}")
    structure = path.with_suffix(".npz")
    config = json.loads(json.dumps(result.config))
    config["structure"]["file"] = structure.name
    report = json.dumps(_rounded(result.report))
    header = (f"# Fitted by moe-trace fit ({dt.datetime.now(dt.UTC):%Y-%m-%d}) from {source} "
              f"({tokens} tokens, {requests} requests).\n"
              f"# Router rows and biases: {structure.name}. Generate with\n"
              f"#   moe-trace synth --preset {path.name} --tokens 100000 -o synthetic.parquet\n"
              f"# Fit report (statistics matched, real vs fitted): {report}\n")
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
    existed = structure.exists()
    with atomic_path(structure) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, router=result.router, bias=result.bias, report=np.array(report))
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(header + body, encoding="utf-8")
    except BaseException:
        if not existed:
            structure.unlink(missing_ok=True)
        raise
    return path, structure


# ---- the held-out check -------------------------------------------------------------------------
def mean_profile(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """The element-wise mean of several routing profiles (numbers and lists of numbers; None
    where any profile has None)."""

    def merge(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, dict):
            return {key: merge([v[key] for v in values]) for key in first}
        if isinstance(first, list):
            return [merge([v[i] for v in values]) for i in range(len(first))]
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            if any(v is None for v in values):
                return None
            return float(np.mean(values))
        return first

    return merge(profiles)


def holdout_check(trace: Trace, *, seeds: int = 4, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Fit on the first half of ``trace``'s tokens, generate ``seeds`` traces as long as the
    second half, and return the routing profiles of the real first half, the real second half
    and the mean over the generated traces (keys ``first``, ``second``, ``synthetic``)."""
    from moe_offload_lab.traces.analysis.profile import routing_profile

    half = trace.num_tokens // 2
    first = trace.select(np.arange(half))
    second = trace.select(np.arange(half, trace.num_tokens))
    result = fit_trace(first, seed=seed, where="the first half", progress=progress)
    with tempfile.TemporaryDirectory() as folder:
        path, _ = write_preset(result, Path(folder) / "first-half.yaml")
        cfg = SynthConfig.preset(str(path))
        synthetic = [routing_profile(generate(cfg, tokens=second.num_tokens, seed=seed + s,
                                              features=0)) for s in range(seeds)]
    return {"first": routing_profile(first), "second": routing_profile(second),
            "synthetic": mean_profile(synthetic)}
