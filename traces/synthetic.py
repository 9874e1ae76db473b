"""Synthetic routing traces with the structure real MoE routing has.

The generative model, per MoE layer ``l`` and token ``t`` (all of it vectorised over tokens):

1. **Popularity**: each layer has a power law over a random ranking of its experts,
   ``logit_pop[l, e] = -alpha_l * log(rank_l(e))``, with ``alpha`` moving linearly from
   ``alpha_first`` to ``alpha_last`` across layers (real models differ strongly between layers).
2. **Topics**: every request draws one of ``topics.count`` topics; a topic favours a random subset
   (``topics.experts_fraction`` of the experts) of each layer by ``topics.strength`` logits, so a
   request touches a subset of the experts (MoE-Infinity's request-level locality).
3. **Cross-layer dependence**: each expert of layer ``l-1`` favours ``cross_layer.successors``
   experts of layer ``l`` by ``cross_layer.strength`` logits; a token's logits at ``l`` add the
   boosts of the experts it used at ``l-1``, each scaled by ``k`` times its gate weight. This is
   the information Prophet-style predictors use.
4. **Routing**: k experts drawn without replacement in proportion to ``softmax(logits)`` (the law
   of the top-k of Gumbel-perturbed logits); gate weights are the softmax of their logits over the
   chosen k at ``router.temperature``, and the slots are ordered by gate weight, largest first.
5. **Temporal reuse**: a token's logits at layer ``l`` add ``temporal.strength`` to the experts the
   previous token of the same request used at ``l`` (adjacent tokens share experts more than
   chance, as hidden states of neighbouring tokens are alike).
6. **Lookahead**: for distance ``d``, the prediction of layer ``l + d`` made at layer ``l`` keeps
   each true expert with probability ``acc_d(l + d)`` and otherwise names an expert that is not
   routed, drawn from the layer's popularity; ``acc_1`` per target layer comes from the preset and
   ``acc_d = chance + (acc_1 - chance) * decay ** (d - 1)`` with ``chance = k / E``. The expected
   lookahead accuracy therefore equals the configured value exactly.

The structure (popularity ranks, topics, successor sets) is drawn from ``structure_seed``, which a
preset fixes: it stands for the model. The requests (lengths, topics, noise) come from ``seed``, so
two seeds of one preset are two datasets routed by the same "model".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
from moe_offload_lab.traces.catalog import available, load_model, load_yaml
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import DECODE, NO_EXPERT, PREFILL, Trace
from moe_offload_lab.traces.spec import ModelSpec

_CHUNK_CELLS = 1 << 22  # tokens x experts per vectorised block (bounds memory for large E)


@dataclass(frozen=True)
class LengthDist:
    """Distribution of a per-request token count: ``fixed``, ``uniform`` or ``lognormal``."""

    kind: str = "lognormal"
    mean: float = 128.0
    sigma: float = 0.5
    min: int = 1
    max: int = 4096

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise ConfigError(
                f"length distribution kind must be fixed, uniform or lognormal, got {self.kind!r}"
            )
        if not 0 <= self.min <= self.max:
            raise ConfigError(
                f"length distribution needs 0 <= min <= max, got {self.min}..{self.max}"
            )
        if self.mean < 0 or self.sigma < 0:
            raise ConfigError("length distribution mean and sigma must not be negative")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` lengths, clipped to ``[min, max]``."""
        if self.kind == "fixed":
            values = np.full(n, self.mean)
        elif self.kind == "uniform":
            values = rng.uniform(self.min, self.max + 1, n)
        else:  # lognormal with the given arithmetic mean
            mu = np.log(max(self.mean, 1e-9)) - self.sigma**2 / 2
            values = rng.lognormal(mu, self.sigma, n)
        return np.clip(np.floor(values), self.min, self.max).astype(np.int64)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic generator (one preset per model in ``conf/trace/``)."""

    model: str
    name: str = ""
    structure_seed: int = 0
    requests: int = 32
    prompt_tokens: LengthDist = field(default_factory=lambda: LengthDist(mean=256, min=1))
    decode_tokens: LengthDist = field(default_factory=lambda: LengthDist(mean=128, min=1))
    alpha_first: float = 0.6
    alpha_last: float = 1.0
    topic_count: int = 16
    topic_experts_fraction: float = 0.5
    topic_strength: float = 1.0
    cross_layer_successors: int = 2
    cross_layer_strength: float = 1.5
    reuse_strength: float = 1.0
    temperature: float = 1.0
    lookahead_distances: int = 0
    lookahead_accuracy: tuple[float, ...] = (0.85,)
    lookahead_decay: float = 0.8
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.requests >= 1, "requests must be at least 1"),
            (self.topic_count >= 1, "topics.count must be at least 1"),
            (0 < self.topic_experts_fraction <= 1, "topics.experts_fraction must be in (0, 1]"),
            (self.cross_layer_successors >= 0, "cross_layer.successors must not be negative"),
            (self.reuse_strength >= 0, "temporal.strength must not be negative"),
            (self.temperature > 0, "router.temperature must be positive"),
            (self.lookahead_distances >= 0, "lookahead.distances must not be negative"),
            (0 < self.lookahead_decay <= 1, "lookahead.decay must be in (0, 1]"),
            (
                all(0 <= a <= 1 for a in self.lookahead_accuracy),
                "lookahead.accuracy values must be in [0, 1]",
            ),
            (len(self.lookahead_accuracy) >= 1, "lookahead.accuracy needs at least one value"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"trace preset {self.name or self.model!r}: {message}")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthConfig:
        """Build from the nested YAML layout of ``conf/trace/*.yaml`` (see any preset)."""
        data = dict(data)
        flat: dict[str, Any] = {}
        sections = {
            "popularity": {"alpha_first": "alpha_first", "alpha_last": "alpha_last"},
            "topics": {
                "count": "topic_count",
                "experts_fraction": "topic_experts_fraction",
                "strength": "topic_strength",
            },
            "cross_layer": {
                "successors": "cross_layer_successors",
                "strength": "cross_layer_strength",
            },
            "temporal": {"strength": "reuse_strength"},
            "router": {"temperature": "temperature"},
            "lookahead": {
                "distances": "lookahead_distances",
                "accuracy": "lookahead_accuracy",
                "decay": "lookahead_decay",
            },
        }
        for section, keys in sections.items():
            block = data.pop(section, None) or {}
            if not isinstance(block, dict):
                raise ConfigError(f"trace preset: {section} must be a mapping")
            unknown = sorted(set(block) - set(keys))
            if unknown:
                raise ConfigError(
                    f"trace preset: unknown key(s) in {section}: {', '.join(unknown)}"
                )
            flat.update({keys[k]: v for k, v in block.items()})
        for key in ("prompt_tokens", "decode_tokens"):
            if key in data:
                block = data.pop(key)
                if not isinstance(block, dict):
                    raise ConfigError(f"trace preset: {key} must be a mapping")
                try:
                    flat[key] = LengthDist(**block)
                except TypeError as exc:
                    raise ConfigError(f"trace preset: {key}: {exc}") from None
        flat.update(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ConfigError(f"trace preset: unknown key(s): {', '.join(unknown)}")
        if "model" not in flat:
            raise ConfigError("trace preset: the key 'model' (a name from conf/model) is required")
        accuracy = flat.get("lookahead_accuracy", (0.85,))
        flat["lookahead_accuracy"] = tuple(float(a) for a in np.atleast_1d(accuracy))
        try:
            return cls(**flat)
        except TypeError as exc:
            raise ConfigError(f"trace preset: {exc}") from None

    @classmethod
    def preset(cls, name: str) -> SynthConfig:
        """The bundled preset ``conf/trace/<name>.yaml``."""
        return cls.from_dict({"name": name, **load_yaml("trace", name)})

    def with_overrides(self, **changes: Any) -> SynthConfig:
        """Copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def model_spec(self) -> ModelSpec:
        """The ModelSpec this preset generates for."""
        return load_model(self.model, **self.model_overrides)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-safe dict (stored in the trace's provenance)."""
        out = dataclasses.asdict(self)
        out["lookahead_accuracy"] = list(self.lookahead_accuracy)
        return out


def presets() -> list[str]:
    """Names of the bundled presets."""
    return available("trace")


# ---- the generator ------------------------------------------------------------------------
@dataclass
class _Structure:
    """The 'model': per-layer popularity logits, topic boosts and successor boosts."""

    pop_logits: np.ndarray  # [L, E]
    topic_boost: np.ndarray  # [topics, L, E]
    successor_boost: (
        np.ndarray
    )  # [L, E, E]; row = expert at l-1, column = expert at l (layer 0 unused)
    popularity: np.ndarray  # [L, E] normalised softmax(pop_logits)


def _build_structure(cfg: SynthConfig, spec: ModelSpec) -> _Structure:
    rng = np.random.default_rng([cfg.structure_seed, 0x5EED])
    n_layers, n_experts = spec.num_moe_layers, spec.num_experts
    alphas = np.linspace(cfg.alpha_first, cfg.alpha_last, n_layers)
    ranks = (
        np.argsort(rng.random((n_layers, n_experts)), axis=1) + 1
    )  # [L, E], a permutation of 1..E
    pop_logits = -alphas[:, None] * np.log(ranks)  # [L, E]
    popularity = np.exp(pop_logits)
    popularity /= popularity.sum(axis=1, keepdims=True)

    favoured = max(1, round(cfg.topic_experts_fraction * n_experts))
    topic_boost = np.zeros((cfg.topic_count, n_layers, n_experts))  # [topics, L, E]
    order = np.argsort(rng.random((cfg.topic_count, n_layers, n_experts)), axis=2)[:, :, :favoured]
    np.put_along_axis(topic_boost, order, cfg.topic_strength, axis=2)

    successor_boost = np.zeros((n_layers, n_experts, n_experts))  # [L, E_prev, E]
    n_succ = min(cfg.cross_layer_successors, n_experts)
    rows = np.arange(n_experts)
    for layer in range(1, n_layers):
        # Each successor slot is a random permutation, so distinct experts at l-1 point to distinct
        # experts at l and the dependence carries information rather than piling onto a few.
        for _ in range(n_succ):
            successor_boost[layer, rows, rng.permutation(n_experts)] += cfg.cross_layer_strength
    return _Structure(pop_logits, topic_boost, successor_boost, popularity)


def _request_layout(
    cfg: SynthConfig, rng: np.random.Generator, requests: int | None, tokens: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and decode lengths per request; with ``tokens`` the total is exactly that."""
    if tokens is None:
        n = cfg.requests if requests is None else requests
        return cfg.prompt_tokens.sample(rng, n), cfg.decode_tokens.sample(rng, n)
    prompts, decodes = [], []
    total = 0
    while total < tokens:
        p, d = cfg.prompt_tokens.sample(rng, 256), cfg.decode_tokens.sample(rng, 256)
        prompts.append(p)
        decodes.append(d)
        total += int((p + d).sum())
    prompt, decode = np.concatenate(prompts), np.concatenate(decodes)
    ends = np.cumsum(prompt + decode)
    last = int(np.searchsorted(ends, tokens))  # the request in which the total is reached
    prompt, decode = prompt[: last + 1].copy(), decode[: last + 1].copy()
    excess = int(ends[last]) - tokens
    cut_decode = min(excess, int(decode[last]))
    decode[last] -= cut_decode
    prompt[last] -= excess - cut_decode
    return prompt, decode


def _token_rows(prompt: np.ndarray, decode: np.ndarray) -> tuple[np.ndarray, ...]:
    lengths = prompt + decode  # [R]
    keep = lengths > 0
    prompt, lengths = prompt[keep], lengths[keep]
    request_id = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)  # [T]
    starts = np.cumsum(lengths) - lengths
    position = (np.arange(int(lengths.sum())) - np.repeat(starts, lengths)).astype(np.int32)  # [T]
    phase = np.where(position < np.repeat(prompt, lengths), PREFILL, DECODE).astype(np.int8)
    return request_id, position, phase


def _top_k(noisy: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values per row, largest first. noisy: [n, E] -> [n, k]."""
    if k == 1:
        return noisy.argmax(axis=1)[:, None]
    part = np.argpartition(-noisy, k - 1, axis=1)[:, :k]  # [n, k] unordered
    order = np.argsort(-np.take_along_axis(noisy, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


@numba.njit(cache=True)
def _route_block(
    pop_logits,
    topic_boost,
    successor_boost,
    reuse_strength,
    inv_temperature,
    topic,
    request_id,
    seed,
    carry_ids,
    carry_request,
    out_ids,
    out_gates,
):
    """Route a block of consecutive tokens through every layer (numba; one pass, no allocation).

    pop_logits [L, E], topic_boost [topics, L, E], successor_boost [L, E, E], topic [n],
    request_id [n], carry_ids [L, k] the routing of the token before the block (updated in
    place), carry_request its request id; writes out_ids / out_gates [n, L, k]. Experts are drawn
    without replacement in proportion to softmax(logits) (the same law as the top-k of Gumbel-
    perturbed logits), then ordered by gate weight, largest first.
    """
    np.random.seed(seed)  # noqa: NPY002 (numba has the legacy API only)
    n = topic.shape[0]
    n_layers, n_experts = pop_logits.shape
    k = out_ids.shape[2]
    logits = np.empty(n_experts)
    weights = np.empty(n_experts)
    chosen = np.empty(k, np.int64)
    for t in range(n):
        same_request = request_id[t] == carry_request
        for layer in range(n_layers):
            for e in range(n_experts):
                logits[e] = pop_logits[layer, e] + topic_boost[topic[t], layer, e]
            if layer > 0:
                # Each expert used at the previous layer pulls its successors in proportion to its
                # gate weight (k * weight is 1 on average), so the top expert steers the most.
                for j in range(k):
                    prev = out_ids[t, layer - 1, j]
                    scale = k * out_gates[t, layer - 1, j]
                    for e in range(n_experts):
                        logits[e] += scale * successor_boost[layer, prev, e]
            if same_request:
                for j in range(k):
                    logits[carry_ids[layer, j]] += reuse_strength
            peak = logits.max()
            for e in range(n_experts):
                weights[e] = np.exp(logits[e] - peak)
            for j in range(k):  # sequential sampling without replacement
                total = weights.sum()
                target = np.random.random() * total  # noqa: NPY002
                pick = -1
                running = 0.0
                for e in range(n_experts):
                    if weights[e] > 0.0:
                        pick = e
                        running += weights[e]
                        if running >= target:
                            break
                chosen[j] = pick
                weights[pick] = 0.0
            for j in range(1, k):  # insertion sort by logit, largest first
                value = chosen[j]
                i = j - 1
                while i >= 0 and logits[chosen[i]] < logits[value]:
                    chosen[i + 1] = chosen[i]
                    i -= 1
                chosen[i + 1] = value
            top = logits[chosen[0]]
            total = 0.0
            for j in range(k):
                weight = np.exp((logits[chosen[j]] - top) * inv_temperature)
                out_ids[t, layer, j] = chosen[j]
                out_gates[t, layer, j] = weight
                total += weight
            for j in range(k):
                out_gates[t, layer, j] /= total
        for layer in range(n_layers):
            for j in range(k):
                carry_ids[layer, j] = out_ids[t, layer, j]
        carry_request = request_id[t]
    return carry_request


@numba.njit(cache=True)
def _lookahead_kernel(expert_ids, distance, keep_prob, cdf, seed, out):
    """Fill out [T, L, k] with predictions of layer l + distance made at layer l.

    expert_ids [T, L, k] true routing, keep_prob [L] per target layer, cdf [L, E] popularity. Each
    true expert is kept with keep_prob, otherwise replaced by an expert drawn from the target
    layer's popularity that is neither routed nor already named in the row. Rows whose target lies
    beyond the last layer are left as they are (the caller fills them with -1).
    """
    np.random.seed(seed)  # noqa: NPY002 (numba has the legacy API only)
    n, n_layers, k = expert_ids.shape
    n_experts = cdf.shape[1]
    for t in range(n):
        for source in range(n_layers - distance):
            target = source + distance
            for j in range(k):
                out[t, source, j] = expert_ids[t, target, j]
            if k >= n_experts:
                continue
            for j in range(k):
                if np.random.random() < keep_prob[target]:  # noqa: NPY002
                    continue
                while True:
                    draw = np.random.random()  # noqa: NPY002
                    candidate = min(np.searchsorted(cdf[target], draw), n_experts - 1)
                    clash = False
                    for i in range(k):
                        if expert_ids[t, target, i] == candidate or out[t, source, i] == candidate:
                            clash = True
                    if not clash:
                        out[t, source, j] = candidate
                        break


def _lookahead_accuracy(cfg: SynthConfig, spec: ModelSpec) -> np.ndarray:
    """Configured keep-probability per distance and target layer -> [D, L] (nan where undefined)."""
    n_layers, d_max = spec.num_moe_layers, cfg.lookahead_distances
    given = np.asarray(cfg.lookahead_accuracy, dtype=float)
    if given.size == 1:
        acc1 = np.full(n_layers, given[0])
    elif given.size == n_layers - 1:
        acc1 = np.concatenate([[np.nan], given])  # values for target layers 1..L-1
    else:
        raise ConfigError(
            f"trace preset {cfg.name or cfg.model!r}: lookahead.accuracy needs one "
            f"value or {n_layers - 1} (target layers 1..{n_layers - 1}), got {given.size}"
        )
    chance = spec.top_k / spec.num_experts
    out = np.full((d_max, n_layers), np.nan)
    for d in range(1, d_max + 1):
        out[d - 1, d:] = chance + (acc1[d:] - chance) * cfg.lookahead_decay ** (d - 1)
    return np.clip(out, 0.0, 1.0)


def generate(
    config: SynthConfig | str,
    *,
    requests: int | None = None,
    tokens: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Trace:
    """Generate a trace from a preset name or a :class:`SynthConfig`.

    ``requests`` overrides the preset's request count; ``tokens`` instead generates requests until
    exactly that many tokens exist (the last request is cut short). Deterministic per seed.
    """
    cfg = SynthConfig.preset(config) if isinstance(config, str) else config
    if requests is not None and tokens is not None:
        raise ConfigError("give either a number of requests or a number of tokens, not both")
    if (requests is not None and requests < 1) or (tokens is not None and tokens < 1):
        raise ConfigError("the number of requests or tokens must be at least 1")
    spec = cfg.model_spec()
    accuracy = _lookahead_accuracy(cfg, spec)
    structure = _build_structure(cfg, spec)
    rng = np.random.default_rng([seed, 0xDA7A])

    prompt, decode = _request_layout(cfg, rng, requests, tokens)
    request_id, position, phase = _token_rows(prompt, decode)
    n_tokens, n_layers, k = request_id.shape[0], spec.num_moe_layers, spec.top_k
    if n_tokens == 0:
        raise ConfigError(
            "the length distributions produced no tokens; raise prompt or decode lengths"
        )
    topic = rng.integers(0, cfg.topic_count, size=int(request_id.max()) + 1)[request_id]  # [T]

    expert_ids = np.empty((n_tokens, n_layers, k), dtype=np.int16)  # [T, L, k]
    gate_weights = np.empty((n_tokens, n_layers, k), dtype=np.float32)  # [T, L, k]
    carry_ids = np.zeros((n_layers, k), dtype=np.int16)  # [L, k] routing of the previous token
    carry_request = np.int32(-1)
    block = max(1, _CHUNK_CELLS // (n_layers * spec.num_experts))
    starts = range(0, n_tokens, block)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="synth", unit="block")
    for lo in starts:
        hi = min(lo + block, n_tokens)
        carry_request = _route_block(
            structure.pop_logits,
            structure.topic_boost,
            structure.successor_boost,
            cfg.reuse_strength,
            1.0 / cfg.temperature,
            topic[lo:hi],
            request_id[lo:hi],
            int(rng.integers(2**31)),
            carry_ids,
            carry_request,
            expert_ids[lo:hi],
            gate_weights[lo:hi],
        )

    lookahead: dict[int, np.ndarray] = {}
    cdf = np.cumsum(structure.popularity, axis=1)  # [L, E]
    cdf /= cdf[:, -1:]
    for d in range(1, cfg.lookahead_distances + 1):
        ahead = np.full((n_tokens, n_layers, k), NO_EXPERT, dtype=np.int16)  # [T, L, k]
        _lookahead_kernel(
            expert_ids, d, np.nan_to_num(accuracy[d - 1]), cdf, int(rng.integers(2**31)), ahead
        )
        lookahead[d] = ahead

    provenance = {
        "source": "synthetic",
        "generator": "moe_offload_lab.traces.synthetic",
        "preset": cfg.name or None,
        "seed": seed,
        "requests_arg": requests,
        "tokens_arg": tokens,
        "config": cfg.to_dict(),
        "lookahead_accuracy_target": {
            str(d): [None if np.isnan(a) else round(float(a), 6) for a in accuracy[d - 1]]
            for d in range(1, cfg.lookahead_distances + 1)
        },
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return Trace(
        spec,
        request_id,
        position,
        phase,
        expert_ids,
        gate_weights,
        lookahead,
        provenance=provenance,
    )
