"""Policy configs: ``conf/policy/<name>.yaml``, validated into :class:`PolicyConfig`.

A config composes one component of each kind, each ``{name: <registered name>, <params>}``::

    name: gate-lookahead
    description: Next-layer gate lookahead prefetch with an LRU cache.
    horizon: 1            # distances the predictor scores (targets l+1 .. l+h)
    seed: 0
    predictor:   {name: gate-lookahead, confidence: [0.9]}
    planner:     {name: next-layer, n: 2}
    replacement: {name: lru}
    placement:   {name: gpu}
    admission:   {name: always}          # optional
    decision_cost: {where: cpu, fixed_s: 2.0e-6, per_token_s: 0.0}   # optional override
    runtime: {staging_buffers: 2, batched_copies: true}                # optional

A component of the user's own code takes ``_target_`` (an import path) instead of ``name``::

    predictor: {_target_: transition_table.TransitionTablePredictor, decay: 0.98}

(:mod:`policies.plugins`: import paths, ``.py`` files, entry points). Without ``decision_cost``
the policy is charged the measured cost table's figures (:mod:`policies.cost_table`);
``decision_cost: {where, fixed_s, per_token_s}`` declares a figure by hand instead, and
``decision_cost: {table: PATH}`` picks another measured table.

``runtime`` (optional) names what the paper's own runtime builds in beside the policy's decisions
(PreScope's AsyncIO: double-buffered staging, batched copies): implementation-profile fields
(``conf/system``, :class:`sim.system.SystemProfile`) that the simulator sets over the run's
profile for this policy (:attr:`policies.base.Policy.runtime`). The simulator checks the names;
the executor, which is a real runtime, ignores them.

The files are plain YAML so Hydra can compose them as its ``policy`` group; :func:`build_policy`
accepts a mapping, an OmegaConf node, a bundled name or a path to a YAML file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moe_offload_lab.policies.plugins import TARGET_KEY
from moe_offload_lab.traces.catalog import available, load_named_or_path
from moe_offload_lab.traces.errors import ConfigError

_COMPONENTS = ("predictor", "planner", "replacement", "placement", "admission")
_DEFAULTS = {"predictor": "none", "planner": "on-demand", "replacement": "lru",
             "placement": "gpu", "admission": "always"}


@dataclass(frozen=True)
class PolicyConfig:
    """A composed policy's configuration (see module docstring)."""

    name: str
    description: str = ""
    horizon: int = 1
    seed: int = 0
    predictor: Mapping[str, Any] = field(default_factory=lambda: {"name": "none"})
    planner: Mapping[str, Any] = field(default_factory=lambda: {"name": "on-demand"})
    replacement: Mapping[str, Any] = field(default_factory=lambda: {"name": "lru"})
    placement: Mapping[str, Any] = field(default_factory=lambda: {"name": "gpu"})
    admission: Mapping[str, Any] = field(default_factory=lambda: {"name": "always"})
    decision_cost: Mapping[str, Any] | None = None
    runtime: Mapping[str, Any] | None = None

    @property
    def model_bound(self) -> bool:
        """Whether the policy only fits the model shape its trained predictor was trained on
        (a ``learned`` checkpoint); shape-free policies run on any model."""
        return self.predictor.get("name") == "learned"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML- and JSON-safe)."""
        out = dataclasses.asdict(self)
        for kind in _COMPONENTS:
            out[kind] = plain(out[kind])
        if out["runtime"] is None:  # optional: absent unless set
            del out["runtime"]
        return out


def component_id(part: Mapping[str, Any]) -> str:
    """How a component mapping is named in tables and cost lookups: its ``name``, else its
    ``_target_`` import path."""
    return str(part.get("name") or part.get(TARGET_KEY))


def plain(value: Any) -> Any:
    """Mappings and sequences as plain dicts and lists (YAML- and JSON-safe)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _to_container(data: Any) -> Any:
    """OmegaConf nodes to plain containers; anything else unchanged."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - hydra is a declared dependency
        return data
    if isinstance(data, DictConfig):
        return OmegaConf.to_container(data, resolve=True)
    return data


def policy_config(data: Mapping[str, Any], where: str = "policy config") -> PolicyConfig:
    """Validate a mapping into a :class:`PolicyConfig`."""
    data = _to_container(data)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(PolicyConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(known))}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    values: dict[str, Any] = {"name": name}
    for key in ("horizon", "seed"):
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
            values[key] = value
    if values.get("horizon", 1) < 1:
        raise ConfigError(f"{where}: horizon must be at least 1")
    if "description" in data:
        values["description"] = str(data["description"])
    for kind in _COMPONENTS:
        if kind not in data or data[kind] is None:
            values[kind] = {"name": _DEFAULTS[kind]}
            continue
        part = data[kind]
        if isinstance(part, str):
            part = {"name": part}
        if not isinstance(part, Mapping) or not (isinstance(part.get("name"), str)
                                                 or isinstance(part.get(TARGET_KEY), str)):
            raise ConfigError(f"{where}: {kind} must be a mapping with a 'name' (or a "
                              f"'{TARGET_KEY}' import path)")
        values[kind] = dict(part)
    if data.get("decision_cost") is not None:
        if not isinstance(data["decision_cost"], Mapping):
            raise ConfigError(f"{where}: decision_cost must be a mapping")
        values["decision_cost"] = dict(data["decision_cost"])
    if data.get("runtime") is not None:
        runtime = data["runtime"]
        if not isinstance(runtime, Mapping) or not all(
                isinstance(k, str) and isinstance(v, (bool, int, float, str))
                for k, v in runtime.items()):
            raise ConfigError(f"{where}: runtime must be a mapping of implementation-profile "
                              f"fields to values, got {runtime!r}")
        values["runtime"] = dict(runtime)
    return PolicyConfig(**values)


def load_policy_config(name_or_path: str | Path) -> PolicyConfig:
    """A bundled config by name (``conf/policy/<name>.yaml``) or any YAML file by path."""
    data, where = load_named_or_path("policy", name_or_path)
    return policy_config(data, where)


def available_policies() -> list[str]:
    """Names of the bundled policy configs."""
    return available("policy")


def shape_free_policies() -> list[str]:
    """Names of the bundled policies that run on any model shape (not :attr:`model_bound`)."""
    return [n for n in available_policies() if not load_policy_config(n).model_bound]


def build_policy(config: PolicyConfig | Mapping[str, Any] | str | Path):  # noqa: ANN201
    """A ready :class:`~policies.composed.ComposedPolicy` (call ``reset`` before use)."""
    from moe_offload_lab.policies.composed import ComposedPolicy

    if isinstance(config, (str, Path)):
        config = load_policy_config(config)
    elif not isinstance(config, PolicyConfig):
        config = policy_config(config)
    return ComposedPolicy(config)
