"""Parameters of the synthetic generator: :class:`SynthConfig` (one preset per model in
``conf/trace/``) and :class:`LengthDist` (request lengths).

A preset is a YAML mapping with these sections (every key optional except ``model``)::

    model: mixtral-8x7b          # a name from conf/model
    structure_seed: 8007         # the "model": router rows, popularity ranking
    requests: 32
    prompt_tokens: {kind: lognormal, mean: 256, sigma: 0.6, min: 8, max: 4096}
    decode_tokens: {kind: lognormal, mean: 192, sigma: 0.6, min: 8, max: 2048}
    popularity: {alpha_first: 0.0, alpha_last: 0.0}     # power-law router bias per layer
    state: {dim: 16, request_share: 0.2, token_persistence: 0.6, layer_persistence: []}
    router: {noise: 0.8, temperature: 1.0, gates: topk}
    lookahead: {distances: 3, accuracy: 0.85}           # one value or one per target layer
    features: {width: 16, noise: 0.0}
    structure: {file: fitted.npz}                      # fitted router rows and biases (fit)

:mod:`traces.synth.generate` explains what each parameter does in the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.traces.catalog import available, load_model, load_named_or_path
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.spec import ModelSpec

GATE_MODES = ("topk", "all")


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


def _floats(value: Any, name: str) -> tuple[float, ...]:
    """One number or a list of numbers as a tuple of floats (ConfigError otherwise)."""
    try:
        values = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=float)))
    except (TypeError, ValueError):
        raise ConfigError(f"trace preset: {name} must be a number or a list of numbers, "
                          f"got {value!r}") from None
    if not all(np.isfinite(values)):
        raise ConfigError(f"trace preset: {name} must be finite")
    return values


_TUPLE_FIELDS = ("token_persistence", "layer_persistence", "router_noise", "temperature",
                 "lookahead_accuracy")


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic generator (one preset per model in ``conf/trace/``).

    Per-layer parameters (``token_persistence``, ``router_noise``, ``temperature``) take one
    value for every MoE layer or one per layer; ``layer_persistence`` and
    ``lookahead_accuracy`` one value or one per layer 1 .. L-1 (the layer a step leads to).
    ``layer_persistence`` empty means "solve it from ``lookahead_accuracy``".
    """

    model: str
    name: str = ""
    structure_seed: int = 0
    requests: int = 32
    prompt_tokens: LengthDist = field(default_factory=lambda: LengthDist(mean=256, min=1))
    decode_tokens: LengthDist = field(default_factory=lambda: LengthDist(mean=128, min=1))
    alpha_first: float = 0.6
    alpha_last: float = 1.0
    state_dim: int = 16
    request_share: float = 0.1
    token_persistence: tuple[float, ...] = (0.5,)
    layer_persistence: tuple[float, ...] = ()
    router_noise: tuple[float, ...] = (0.5,)
    temperature: tuple[float, ...] = (1.0,)
    gates: str = "topk"
    lookahead_distances: int = 0
    lookahead_accuracy: tuple[float, ...] = (0.85,)
    features_width: int = 16
    features_noise: float = 0.0
    structure_file: str = ""
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:  # accept scalars and lists from Python callers too
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, _floats(value, name))
        checks = [
            (self.requests >= 1, "requests must be at least 1"),
            (self.state_dim >= 1, "state.dim must be at least 1"),
            (0.0 <= self.request_share < 1.0, "state.request_share must be in [0, 1)"),
            (len(self.token_persistence) >= 1 and in_unit(self.token_persistence)
             and max(self.token_persistence) < 1.0,
             "state.token_persistence values must be in [0, 1)"),
            (in_unit(self.layer_persistence), "state.layer_persistence values must be in [0, 1]"),
            (len(self.router_noise) >= 1 and min(self.router_noise) >= 0,
             "router.noise must not be negative"),
            (len(self.temperature) >= 1 and min(self.temperature) > 0,
             "router.temperature must be positive"),
            (self.gates in GATE_MODES, f"router.gates must be one of {', '.join(GATE_MODES)}"),
            (self.lookahead_distances >= 0, "lookahead.distances must not be negative"),
            (len(self.lookahead_accuracy) >= 1 and in_unit(self.lookahead_accuracy),
             "lookahead.accuracy values must be in [0, 1]"),
            (self.features_width >= 0, "features.width must not be negative"),
            (self.features_width <= self.state_dim,
             "features.width cannot exceed state.dim (features are the hidden state's "
             "coordinates)"),
            (self.features_noise >= 0, "features.noise must not be negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"trace preset {self.name or self.model!r}: {message}")

    # ---- construction -------------------------------------------------------------------------
    _SECTIONS = {
        "popularity": {"alpha_first": "alpha_first", "alpha_last": "alpha_last"},
        "state": {"dim": "state_dim", "request_share": "request_share",
                  "token_persistence": "token_persistence",
                  "layer_persistence": "layer_persistence"},
        "router": {"noise": "router_noise", "temperature": "temperature", "gates": "gates"},
        "lookahead": {"distances": "lookahead_distances", "accuracy": "lookahead_accuracy"},
        "features": {"width": "features_width", "noise": "features_noise"},
        "structure": {"file": "structure_file"},
    }

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path | None = None) -> SynthConfig:
        """Build from the nested YAML layout of ``conf/trace/*.yaml`` (see the module docstring).

        A relative ``structure.file`` is taken relative to ``base_dir`` (the preset's folder).
        """
        data = dict(data)
        flat: dict[str, Any] = {}
        for section, keys in cls._SECTIONS.items():
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
        for name in _TUPLE_FIELDS:
            if name in flat:
                flat[name] = () if flat[name] in (None, []) else _floats(flat[name], name)
        if flat.get("structure_file") and base_dir is not None:
            file = Path(flat["structure_file"])
            flat["structure_file"] = str(file if file.is_absolute() else base_dir / file)
        try:
            return cls(**flat)
        except TypeError as exc:
            raise ConfigError(f"trace preset: {exc}") from None

    @classmethod
    def preset(cls, name: str) -> SynthConfig:
        """The bundled preset ``conf/trace/<name>.yaml``, or a preset YAML file by path (as
        ``moe-trace fit`` writes)."""
        data, _ = load_named_or_path("trace", name)
        text = str(name)
        if text.endswith((".yaml", ".yml")) or "/" in text:
            path = Path(text)
            default_name = path.stem
        else:
            from moe_offload_lab.traces.catalog import conf_dir

            path = conf_dir() / "trace" / f"{name}.yaml"
            default_name = name
        return cls.from_dict({"name": default_name, **data}, base_dir=path.parent)

    def with_overrides(self, **changes: Any) -> SynthConfig:
        """Copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def model_spec(self) -> ModelSpec:
        """The ModelSpec this preset generates for."""
        return load_model(self.model, **self.model_overrides)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-safe dict (stored in the trace's provenance)."""
        out = dataclasses.asdict(self)
        for name in _TUPLE_FIELDS:
            out[name] = list(getattr(self, name))
        if self.structure_file:
            out["structure_file"] = Path(self.structure_file).name  # no folder of this machine
        return out


def in_unit(values: tuple[float, ...]) -> bool:
    """All values in [0, 1]."""
    return all(0.0 <= v <= 1.0 for v in values)


def presets() -> list[str]:
    """Names of the bundled presets."""
    return available("trace")


def per_layer(values: tuple[float, ...], n_layers: int, name: str, where: str,
              offset: int = 0) -> np.ndarray:
    """A per-layer parameter as an [n_layers] array: one value for all, or one per layer
    ``offset .. n_layers-1`` (the first ``offset`` entries are then NaN)."""
    given = np.asarray(values, dtype=float)
    wanted = n_layers - offset
    if given.size == 1:
        out = np.full(n_layers, given[0])
    elif given.size == wanted:
        out = np.concatenate([np.full(offset, np.nan), given])
    else:
        span = f"layers {offset}..{n_layers - 1}" if offset else "every MoE layer"
        raise ConfigError(f"trace preset {where!r}: {name} needs one value or {wanted} "
                          f"({span}), got {given.size}")
    if offset:
        out[:offset] = np.nan
    return out
