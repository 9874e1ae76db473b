"""Component registries: predictors, planners, replacement rules, placement rules, admission.

A component is a class with a nested ``Params`` dataclass (its configuration, defaults included)
registered under a name::

    @PREDICTORS.register("history")
    class HistoryPredictor(Predictor):
        @dataclass(frozen=True)
        class Params:
            smoothing: float = 0.0

Configs select components by name with their parameters (``{name: history, smoothing: 0.5}``),
or name a class of the user's own code by import path (``{_target_: mypkg.MyPredictor}``);
names not built in are looked up among installed packages' entry points
(:mod:`policies.plugins`). :meth:`Registry.build` checks the parameters against ``Params`` and
raises :class:`~traces.errors.ConfigError` with a one-line message for anything wrong. Every
module in a component package is imported on first lookup, so a new component is one new file.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from moe_offload_lab.policies.plugins import (
    TARGET_KEY,
    PluginEntry,
    entry_points,
    load_entry,
    locate,
)
from moe_offload_lab.traces.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Parameters of a component that takes none."""


class Registry:
    """Names to component classes of one kind (``predictor``, ``planner``...)."""

    def __init__(self, kind: str, package: str, base: str = "builtins:object") -> None:
        self.kind = kind
        self.package = package
        self._base = base  # "module:Class" of the kind's base class, resolved on first use
        self._classes: dict[str, type] = {}
        self._plugins: dict[str, type] = {}  # entry-point names loaded so far
        self._loaded = False

    @property
    def base(self) -> type:
        """The base class every component of this kind subclasses."""
        module, _, name = self._base.partition(":")
        return getattr(importlib.import_module(module), name)

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
        """Built-in names (and those registered by imported plug-in modules), sorted."""
        self._load()
        return sorted(self._classes)

    def plugin_entries(self) -> dict[str, PluginEntry]:
        """Entry points of this kind in installed packages (not imported), by name."""
        return entry_points(self.kind)

    def get(self, name: str) -> type:
        """The class registered as ``name``, else the entry point of that name."""
        self._load()
        cls = self._classes.get(name) or self._plugins.get(name)
        if cls is not None:
            return cls
        entry = self.plugin_entries().get(name)
        if entry is None:
            plugins = sorted(self.plugin_entries())
            extra = f"; plug-ins: {', '.join(plugins)}" if plugins else ""
            raise ConfigError(f"unknown {self.kind} {name!r}; available: "
                              f"{', '.join(self.names())}{extra} (a class of your own: "
                              f"{TARGET_KEY}: package.module.Class)")
        cls = self._plugins[name] = load_entry(entry, self.base)
        return cls

    def locate(self, target: str) -> type:
        """The class a ``_target_`` import path names (see :mod:`policies.plugins`)."""
        return locate(target, self.kind, self.base)

    def component_class(self, config: Mapping[str, Any]) -> type:
        """The class a component mapping selects, by ``name`` or ``_target_``."""
        if TARGET_KEY in config:
            if "name" in config:
                raise ConfigError(f"{self.kind} config has both 'name' and {TARGET_KEY!r}; "
                                  f"give one")
            return self.locate(config[TARGET_KEY])
        if "name" not in config:
            raise ConfigError(f"{self.kind} config lacks 'name' (or {TARGET_KEY!r})")
        name = config["name"]
        if not isinstance(name, str):
            raise ConfigError(f"{self.kind} name must be a string, got {name!r}")
        return self.get(name)

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
        cls = self.component_class(config)
        label = config.get("name") or config.get(TARGET_KEY)
        params_cls = getattr(cls, "Params", NoParams)
        params = parse_params(params_cls, {k: v for k, v in config.items()
                                           if k not in ("name", TARGET_KEY)},
                              f"{self.kind} {label!r}")
        component = cls(params)
        if TARGET_KEY in config and cls.__dict__.get("name") is None \
                and cls not in self._classes.values():
            component.name = str(config[TARGET_KEY])  # unregistered: named by its import path
        return component


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


_P = "moe_offload_lab.policies"
PREDICTORS = Registry("predictor", f"{_P}.predictors", f"{_P}.predictors.base:Predictor")
PLANNERS = Registry("planner", f"{_P}.planners", f"{_P}.planners.base:Planner")
REPLACEMENTS = Registry("replacement", f"{_P}.replacement",
                        f"{_P}.replacement.base:ReplacementRule")
PLACEMENTS = Registry("placement", f"{_P}.placement", f"{_P}.placement.base:PlacementRule")
ADMISSIONS = Registry("admission", f"{_P}.admission", f"{_P}.admission.base:Admission")
#: every registry, in the order a composed policy lists its components
REGISTRIES = {r.kind: r for r in (PREDICTORS, PLANNERS, REPLACEMENTS, PLACEMENTS, ADMISSIONS)}


def require(condition: bool, message: str) -> None:
    """For ``Params.__post_init__``: raise ValueError (reported as a ConfigError naming the
    component) unless ``condition``."""
    if not condition:
        raise ValueError(message)
