"""The "model" behind a preset: router rows, router biases and the latent-state dynamics.

:func:`build_structure` turns a :class:`~traces.synth.config.SynthConfig` and its ModelSpec into
arrays the kernels read. Everything here is drawn from ``structure_seed`` (or read from a fitted
``structure.file``), never from the request seed, so two seeds of one preset are two datasets
routed by the same model. Built structures are cached per process (sweeps generate many traces of
one preset).

Layer persistence from a lookahead target: when a preset gives ``lookahead.accuracy`` instead of
``state.layer_persistence``, the persistence ``rho_l`` of each layer is solved so that the router
of layer ``l`` applied to the state of layer ``l - 1`` names the configured share of layer ``l``'s
true top-k (a Monte-Carlo estimate on ``_MC_SAMPLES`` sampled states, bisection over ``rho_l``).
The same estimate gives the expected accuracy at every distance, stored in the provenance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.spec import ModelSpec
from moe_offload_lab.traces.synth.config import SynthConfig, per_layer

_MC_SAMPLES_TIMES_K = 8192  # sampled (state, slot) pairs per accuracy estimate (std ~0.004)
_MC_MAX_CELLS = 1 << 17  # bound on samples x experts (cost per estimate)
_BISECTION_STEPS = 9  # then a linear interpolation between the bracket's ends


@dataclass(frozen=True)
class Structure:
    """Arrays of one synthetic model (``L`` MoE layers, ``E`` experts, ``D`` state dimensions)."""

    router: np.ndarray  # [L, E, D] unit rows
    bias: np.ndarray  # [L, E]
    noise: np.ndarray  # [L] router noise (std of a logit's private part)
    layer_persistence: np.ndarray  # [L] rho_l, layer l-1 -> l (entry 0 unused, 0)
    token_persistence: np.ndarray  # [L] phi_l, token t-1 -> t within a request
    request_share: float  # share of the state's variance fixed per request
    inv_temperature: np.ndarray  # [L] gate softmax scale
    gates_all: bool  # gates are softmax shares over all E (else over the chosen k)
    lookahead_expected: np.ndarray  # [distances, L] expected accuracy per target layer (NaN < d)
    lookahead_requested: np.ndarray | None  # [L] the configured next-layer target (NaN at 0)

    def correlation(self, source: int, target: int) -> float:
        """Correlation of one token's state at two layers: a + (1 - a) prod(rho)."""
        chain = float(np.prod(self.layer_persistence[source + 1:target + 1]))
        return self.request_share + (1.0 - self.request_share) * chain


# the fields that shape the structure (request lengths and counts do not)
_STRUCTURE_FIELDS = ("structure_seed", "alpha_first", "alpha_last", "state_dim", "request_share",
                     "token_persistence", "layer_persistence", "router_noise", "temperature",
                     "gates", "lookahead_distances", "lookahead_accuracy", "structure_file")


def build_structure(cfg: SynthConfig, spec: ModelSpec) -> Structure:
    """The structure of ``cfg`` for ``spec`` (cached per process)."""
    fields = {name: getattr(cfg, name) for name in _STRUCTURE_FIELDS}
    stamp = 0.0
    if cfg.structure_file and Path(cfg.structure_file).is_file():
        stamp = Path(cfg.structure_file).stat().st_mtime
    key = json.dumps([fields, spec.to_dict(), stamp, cfg.name or cfg.model], sort_keys=True,
                     default=str)
    if key not in _CACHE:
        if len(_CACHE) >= 64:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _build(cfg, spec)
    return _CACHE[key]


_CACHE: dict[str, Structure] = {}


def _build(cfg: SynthConfig, spec: ModelSpec) -> Structure:
    where = cfg.name or cfg.model
    n_layers, n_experts, dim = spec.num_moe_layers, spec.num_experts, cfg.state_dim
    rng = np.random.default_rng([cfg.structure_seed, 0x5EED])
    if cfg.structure_file:
        router, bias = _fitted(Path(cfg.structure_file), n_layers, n_experts, dim, where)
    else:
        router = rng.standard_normal((n_layers, n_experts, dim))  # [L, E, D]
        router /= np.linalg.norm(router, axis=2, keepdims=True)
        alphas = np.linspace(cfg.alpha_first, cfg.alpha_last, n_layers)
        ranks = np.argsort(rng.random((n_layers, n_experts)), axis=1) + 1  # [L, E] 1..E
        bias = -alphas[:, None] * np.log(ranks)  # [L, E]
    noise = per_layer(cfg.router_noise, n_layers, "router.noise", where)
    phi = per_layer(cfg.token_persistence, n_layers, "state.token_persistence", where)
    inv_temperature = 1.0 / per_layer(cfg.temperature, n_layers, "router.temperature", where)
    share = float(cfg.request_share)
    mc = _MonteCarlo(router, bias, noise, spec.top_k, cfg.structure_seed)
    requested = None
    if cfg.layer_persistence:
        rho = per_layer(cfg.layer_persistence, n_layers, "state.layer_persistence", where, 1)
    else:
        requested = per_layer(cfg.lookahead_accuracy, n_layers, "lookahead.accuracy", where, 1)
        rho = np.full(n_layers, np.nan)
        for target in range(1, n_layers):
            rho[target] = mc.solve_persistence(target, requested[target], share)
    rho[0] = 0.0
    expected = np.full((cfg.lookahead_distances, n_layers), np.nan)
    partial = Structure(router, bias, noise, rho, phi, share, inv_temperature,
                        cfg.gates == "all", expected, requested)
    for d in range(1, cfg.lookahead_distances + 1):
        for target in range(d, n_layers):
            expected[d - 1, target] = mc.accuracy(target, partial.correlation(target - d, target))
    for array in (router, bias, noise, rho, phi, inv_temperature, expected):
        array.setflags(write=False)
    return partial


def _fitted(path: Path, n_layers: int, n_experts: int, dim: int,
            where: str) -> tuple[np.ndarray, np.ndarray]:
    """Router rows [L, E, D] and biases [L, E] from a fitted structure file (``moe-trace fit``)."""
    if not path.is_file():
        raise ConfigError(f"trace preset {where!r}: structure file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            router = np.asarray(data["router"], dtype=np.float64)
            bias = np.asarray(data["bias"], dtype=np.float64)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"trace preset {where!r}: cannot read structure file {path.name} "
                          f"({exc}); it needs arrays 'router' [L, E, D] and 'bias' [L, E]") \
            from None
    if router.shape != (n_layers, n_experts, dim) or bias.shape != (n_layers, n_experts):
        raise ConfigError(f"trace preset {where!r}: structure file {path.name} holds router "
                          f"{router.shape} and bias {bias.shape}, the model needs "
                          f"{(n_layers, n_experts, dim)} and {(n_layers, n_experts)}")
    if not (np.isfinite(router).all() and np.isfinite(bias).all()):
        raise ConfigError(f"trace preset {where!r}: structure file {path.name} has non-finite "
                          "values")
    norms = np.linalg.norm(router, axis=2, keepdims=True)
    return router / np.maximum(norms, 1e-12), bias


class _MonteCarlo:
    """Expected gate-lookahead accuracy for a target layer and a state correlation.

    Common random numbers (one draw of states and noise per structure) make the estimate a
    smooth, monotone function of the correlation, so bisection converges.
    """

    def __init__(self, router: np.ndarray, bias: np.ndarray, noise: np.ndarray, k: int,
                 seed: int) -> None:
        n_layers, n_experts, dim = router.shape
        n = max(512, min(_MC_SAMPLES_TIMES_K // k, _MC_MAX_CELLS // n_experts))
        rng = np.random.default_rng([seed, 0xACC])
        self._h = rng.standard_normal((n, dim))  # [N, D] source states
        self._fresh = rng.standard_normal((n, dim))  # [N, D] independent part of the target
        self._noise = rng.standard_normal((n, n_experts))  # [N, E]
        self._router, self._bias, self._sigma, self._k = router, bias, noise, k
        self._layer_cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _layer(self, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from moe_offload_lab.traces.synth import kernels  # numba: loaded when used

        if target not in self._layer_cache:
            w = self._router[target]  # [E, D]
            source = kernels.project(self._h, w)  # [N, E]
            fresh = kernels.project(self._fresh, w)  # [N, E]
            predicted = kernels.predicted_sets(source + self._bias[target], self._k)  # [N, k]
            self._layer_cache[target] = (predicted, source, fresh)
        return self._layer_cache[target]

    def accuracy(self, target: int, corr: float) -> float:
        """Expected share of layer ``target``'s top-k that the lookahead names, at state
        correlation ``corr`` between the source and the target layer."""
        from moe_offload_lab.traces.synth import kernels

        predicted, source, fresh = self._layer(target)
        return float(kernels.lookahead_overlap(predicted, source, fresh, self._noise,
                                               self._bias[target], float(self._sigma[target]),
                                               float(corr)))

    def solve_persistence(self, target: int, wanted: float, share: float) -> float:
        """rho in [0, 1] whose next-layer accuracy at ``target`` is closest to ``wanted``."""

        def acc(rho: float) -> float:
            return self.accuracy(target, share + (1.0 - share) * rho)

        lo, hi = 0.0, 1.0
        acc_lo, acc_hi = acc(lo), acc(hi)
        if acc_lo >= wanted:
            return 0.0
        if acc_hi <= wanted:
            return 1.0
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            value = acc(mid)
            if value < wanted:
                lo, acc_lo = mid, value
            else:
                hi, acc_hi = mid, value
        if acc_hi > acc_lo:  # the estimate is smooth in rho: interpolate inside the bracket
            return lo + (hi - lo) * (wanted - acc_lo) / (acc_hi - acc_lo)
        return 0.5 * (lo + hi)
