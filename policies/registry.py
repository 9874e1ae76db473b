"""Component registries: predictors, planners, replacement rules, placement rules, admission.

A component is a class with a nested ``Params`` dataclass (its configuration, defaults included)
registered under a name::

    @PREDICTORS.register("history")
    class HistoryPredictor(Predictor):
        @dataclass(frozen=True)
        class Params:
            smoothing: float = 0.0

Configs select components by name with their parameters (``{name: history, smoothing: 0.5}``);
:meth:`Registry.build` checks the parameters against ``Params`` and raises
:class:`~traces.errors.ConfigError` with a one-line message for anything wrong. Every module in a
component package is imported on first lookup, so a new component is one new file.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from moe_offload_lab.traces.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Parameters of a component that takes none."""


class Registry:
    """Names to component classes of one kind (``predictor``, ``planner``...)."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._classes: dict[str, type] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering a component under ``name``."""
        def decorate(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._classes[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls
        return decorate

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._classes)

    def get(self, name: str) -> type:
        """The class registered as ``name``."""
        self._load()
        try:
            return self._classes[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: "
                              f"{', '.join(self.names())}") from None

    def build(self, config: Mapping[str, Any] | str | None, default: str | None = None) -> Any:
        """Instantiate from ``{name: ..., <params>}`` (or a bare name)."""
        if config is None:
            if default is None:
                raise ConfigError(f"policy config lacks a {self.kind}")
            config = {"name": default}
        if isinstance(config, str):
            config = {"name": config}
        if not isinstance(config, Mapping):
            raise ConfigError(f"{self.kind} config must be a mapping with a 'name', "
                              f"got {type(config).__name__}")
        if "name" not in config:
            raise ConfigError(f"{self.kind} config lacks 'name'")
        name = config["name"]
        if not isinstance(name, str):
            raise ConfigError(f"{self.kind} name must be a string, got {name!r}")
        cls = self.get(name)
        params_cls = getattr(cls, "Params", NoParams)
        params = parse_params(params_cls, {k: v for k, v in config.items() if k != "name"},
                              f"{self.kind} {name!r}")
        return cls(params)


def parse_params(params_cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build a ``Params`` dataclass from a mapping, checking names and types."""
    fields = {f.name: f for f in dataclasses.fields(params_cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"{where}: unknown parameter(s) {', '.join(unknown)}; valid: {valid}")
    hints = typing.get_type_hints(params_cls)
    values = {name: _coerce(value, hints[name], f"{where}: {name}") for name, value in data.items()}
    try:
        return params_cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, where) for v in value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


PREDICTORS = Registry("predictor", "moe_offload_lab.policies.predictors")
PLANNERS = Registry("planner", "moe_offload_lab.policies.planners")
REPLACEMENTS = Registry("replacement", "moe_offload_lab.policies.replacement")
PLACEMENTS = Registry("placement", "moe_offload_lab.policies.placement")
ADMISSIONS = Registry("admission", "moe_offload_lab.policies.admission")


def require(condition: bool, message: str) -> None:
    """For ``Params.__post_init__``: raise ValueError (reported as a ConfigError naming the
    component) unless ``condition``."""
    if not condition:
        raise ValueError(message)
