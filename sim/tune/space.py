"""Search spaces: ``conf/tune/<name>.yaml`` (or any YAML path) validated into a :class:`Space`.

A space fixes the objective, the base ``moe-sim`` overrides every trial shares, the pruning
prefix, and the parameters: each one is an Optuna distribution over one ``moe-sim`` override
key, optionally conditional on the value of an earlier categorical parameter (``when``). See
:mod:`sim.tune` for the format.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moe_offload_lab.sim.tune.objectives import check_objectives
from moe_offload_lab.traces.errors import ConfigError

TYPES = ("float", "int", "categorical")
SPACE_KEYS = {"description", "objective", "base", "params", "prune"}
PARAM_KEYS = {"type", "low", "high", "log", "step", "choices", "when"}
PRUNE_KEYS = {"prefix", "startup_trials"}


@dataclass(frozen=True)
class Param:
    """One tuned override: ``key=<suggested value>``, applied when ``when`` holds."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def applies(self, chosen: Mapping[str, Any]) -> bool:
        """Whether the parameter is active given the values chosen so far."""
        return all(chosen.get(k) in values for k, values in self.when.items())

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for a value."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            step = int(self.step or 1)
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=step,
                                     log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def probes(self) -> list[Any]:
        """Values that validation composes: every choice, or both ends of the range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]


@dataclass(frozen=True)
class Prune:
    """Prefix pruning: run ``prefix`` x trace.tokens first, report, let the pruner decide."""

    prefix: float | None = 0.25
    startup_trials: int = 5


@dataclass(frozen=True)
class Space:
    """A validated search space (see module docstring)."""

    name: str
    objectives: tuple[str, ...]
    base: tuple[str, ...]
    params: tuple[Param, ...]
    prune: Prune = Prune()
    description: str = ""

    @property
    def multi(self) -> bool:
        """Whether the study is multi-objective."""
        return len(self.objectives) > 1

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """The ``moe-sim`` overrides of a trial: base, then the active parameters in order."""
        out = list(self.base)
        for param in self.params:
            if param.key in values:
                out.append(f"{param.key}={format_value(values[param.key])}")
        return out

    def sample(self, trial: Any) -> dict[str, Any]:
        """Suggest every active parameter (a define-by-run conditional space)."""
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.applies(chosen):
                chosen[param.key] = param.suggest(trial)
        return chosen

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (stored with the study, so resuming can check it)."""
        params = {}
        for p in self.params:
            item: dict[str, Any] = {"type": p.type}
            if p.type == "categorical":
                item["choices"] = list(p.choices)
            else:
                item.update(low=p.low, high=p.high, log=p.log, step=p.step)
            if p.when:
                item["when"] = {k: list(v) for k, v in p.when.items()}
            params[p.key] = item
        return {"objective": list(self.objectives), "base": list(self.base), "params": params,
                "prune": {"prefix": self.prune.prefix,
                          "startup_trials": self.prune.startup_trials}}


def format_value(value: Any) -> str:
    """A value as Hydra override text (floats keep full precision)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return value


def _param(key: Any, data: Any, earlier: dict[str, Param], where: str) -> Param:
    if not isinstance(key, str) or not key or " " in key or "=" in key:
        raise ConfigError(f"{where}: parameter keys must be moe-sim override keys, got {key!r}")
    where = f"{where}: parameter {key!r}"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping with a 'type'")
    unknown = sorted(set(data) - PARAM_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(PARAM_KEYS))}")
    kind = data.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(TYPES)}, got {kind!r}")
    when: dict[str, tuple[Any, ...]] = {}
    for ref, values in (data.get("when") or {}).items():
        if ref not in earlier or earlier[ref].type != "categorical":
            raise ConfigError(f"{where}: 'when' refers to {ref!r}, which is not an earlier "
                              f"categorical parameter")
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        bad = [v for v in values if v not in earlier[ref].choices]
        if bad:
            raise ConfigError(f"{where}: 'when' value(s) {bad} are not choices of {ref!r}")
        when[ref] = values
    if kind == "categorical":
        choices = data.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty list of choices")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: choices repeat")
        return Param(key, kind, choices=tuple(choices), when=when)
    low = _number(data.get("low"), f"{where}: low")
    high = _number(data.get("high"), f"{where}: high")
    if low > high:
        raise ConfigError(f"{where}: low ({low}) is above high ({high})")
    log = bool(data.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0")
    step = data.get("step")
    if step is not None:
        step = _number(step, f"{where}: step")
        if step <= 0 or log:
            raise ConfigError(f"{where}: step must be positive and cannot be used with log")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise ConfigError(f"{where}: an int parameter needs integer low, high and step")
    return Param(key, kind, low, high, log, step, when=when)


def parse_space(data: Any, name: str, where: str = "tune space") -> Space:
    """Validate a mapping into a :class:`Space` (structure only; see :func:`check_space`)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - SPACE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(SPACE_KEYS))}")
    objective = data.get("objective", "tpot_ms_mean")
    objectives = tuple(objective) if isinstance(objective, (list, tuple)) else (objective,)
    check_objectives(objectives, where)
    base = data.get("base") or []
    if not isinstance(base, (list, tuple)) or not all(isinstance(b, str) and "=" in b
                                                      for b in base):
        raise ConfigError(f"{where}: base must be a list of moe-sim overrides (key=value)")
    params_data = data.get("params") or {}
    if not isinstance(params_data, Mapping) or not params_data:
        raise ConfigError(f"{where}: the space has no parameters ('params' is empty)")
    params: dict[str, Param] = {}
    for key, item in params_data.items():
        params[key] = _param(key, item, params, where)
    tuned = set(params)
    for override in base:
        if override.split("=", 1)[0].lstrip("+~") in tuned:
            raise ConfigError(f"{where}: {override.split('=', 1)[0]!r} is both in base and tuned")
    prune_data = data.get("prune") or {}
    if not isinstance(prune_data, Mapping) or set(prune_data) - PRUNE_KEYS:
        raise ConfigError(f"{where}: prune must be a mapping with {', '.join(sorted(PRUNE_KEYS))}")
    prefix = prune_data.get("prefix", 0.25)
    if prefix is not None and not (isinstance(prefix, (int, float)) and 0 < prefix < 1):
        raise ConfigError(f"{where}: prune.prefix must be in (0, 1) or null, got {prefix!r}")
    startup = prune_data.get("startup_trials", 5)
    if isinstance(startup, bool) or not isinstance(startup, int) or startup < 0:
        raise ConfigError(f"{where}: prune.startup_trials must be an integer >= 0")
    return Space(name, objectives, tuple(base), tuple(params.values()), Prune(prefix, startup),
                 str(data.get("description", "")))


def space_dir() -> Path:
    """The bundled spaces: ``conf/tune``."""
    from moe_offload_lab.traces.catalog import conf_dir

    return conf_dir() / "tune"


def load_space(name_or_path: str | Path, objective: list[str] | None = None) -> Space:
    """A bundled space by name or a YAML file by path; ``objective`` replaces the file's."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = space_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in space_dir().glob("*.yaml"))
        raise ConfigError(f"tune space {str(name_or_path)!r} not found (bundled: "
                          f"{', '.join(names) or 'none'})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"tune space {path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if objective and isinstance(data, dict):
        data = {**data, "objective": objective}
    return parse_space(data if data is not None else {}, path.stem, f"tune space {path.name}")


def _policy_names(space: Space) -> list[Any]:
    for param in space.params:
        if param.key == "policy":
            return list(param.choices)
    return [None]


def check_space(space: Space) -> None:
    """Compose and check the configs the space can produce: every ``policy`` choice, and each
    parameter that applies to it at both ends of its range (unknown keys, keys a chosen policy
    lacks, bad values and unknown policy names raise ConfigError)."""
    from moe_offload_lab.policies.config import available_policies
    from moe_offload_lab.sim.cli import checked_run_config
    from moe_offload_lab.sim.cli_args import YAML_SUFFIXES, searchpath_policies
    from moe_offload_lab.sim.run import prepare

    # a choice may also be a policy file (a plug-in's YAML: composition links it, and refuses a
    # missing file) or a policy in the base's own hydra.searchpath folders
    known = set(available_policies()) | searchpath_policies(space.base)
    for policy in _policy_names(space):
        if policy is not None and policy not in known and not str(policy).endswith(YAML_SUFFIXES):
            raise ConfigError(f"tune space {space.name}: unknown policy {policy!r} (bundled: "
                              f"{', '.join(sorted(known))}; or a path to a policy .yaml)")
        chosen = {} if policy is None else {"policy": policy}
        base = space.overrides(chosen)
        _check(base, space, checked_run_config, prepare)
        for param in space.params:
            if param.key == "policy" or not param.applies(chosen):
                continue
            for value in param.probes():
                where = (f" for policy {policy!r}" if policy else "")
                _check([*base, f"{param.key}={format_value(value)}"], space,
                       checked_run_config, prepare, f"parameter {param.key}={value}{where}")


def _check(overrides: list[str], space: Space, checked_run_config: Any, prepare: Any,
           what: str = "base overrides") -> None:
    try:
        prepare(checked_run_config(overrides))
    except ConfigError as exc:
        hint = ""
        if "Could not override" in str(exc) or "Key '" in str(exc):
            hint = " (a key that only some policies have needs 'when: {policy: [...]}')"
        raise ConfigError(f"tune space {space.name}: {what}: {exc}{hint}") from None
