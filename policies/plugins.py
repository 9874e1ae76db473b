"""Plug-in components: a policy names a component of the user's own code, by import path or by
an installed package's entry point.

Two ways in, both usable for every kind (predictor, planner, replacement, placement, admission):

1. ``_target_`` (Hydra's key for an import path) instead of ``name`` in the component's mapping::

       predictor: {_target_: transition_table.TransitionTablePredictor, decay: 0.99}
       predictor: {_target_: "transition_table.predictor:TransitionTablePredictor"}
       predictor: {_target_: "plugins/my_predictor.py:MyPredictor"}     # a file (cwd-relative)

   A dotted path or ``module:attribute`` needs a module every process building the policy can
   import: an installed package, or a folder on ``PYTHONPATH`` (the joblib workers of a
   ``--multirun``, ``moe-tune`` workers and SLURM jobs inherit the environment). A ``.py`` file
   named by path is loaded by path in each process, so it needs nothing else.
2. Entry points: an installed distribution declares its components in its ``pyproject.toml``::

       [project.entry-points."moe_offload_lab.predictors"]
       transition-table = "transition_table.predictor:TransitionTablePredictor"

   and configs then name them like built-in ones (``{name: transition-table}``). The groups are
   :data:`ENTRY_POINT_GROUPS`: ``moe_offload_lab.predictors``, ``.planners``,
   ``.replacements``, ``.placements`` and ``.admissions``. A built-in name wins over an entry
   point of the same name (``moe-policy components`` lists the shadowed one).

Either way the class must subclass the kind's base class (``Predictor``, ``Planner``,
``ReplacementRule``, ``PlacementRule``, ``Admission``) and, when it takes parameters, declare
them as a nested ``Params`` dataclass like the built-in components. A path that does not import,
an attribute that is missing or a class of the wrong kind is one :class:`ConfigError` line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError

TARGET_KEY = "_target_"
ENTRY_POINT_GROUPS = {
    "predictor": "moe_offload_lab.predictors",
    "planner": "moe_offload_lab.planners",
    "replacement": "moe_offload_lab.replacements",
    "placement": "moe_offload_lab.placements",
    "admission": "moe_offload_lab.admissions",
}
_FILE_MODULE_PREFIX = "moe_offload_lab_plugin_"


@dataclass(frozen=True)
class PluginEntry:
    """One entry point of a component group: its name, target and distribution."""

    kind: str
    name: str
    value: str
    distribution: str

    @property
    def where(self) -> str:
        """``distribution (value)`` for listings and messages."""
        return f"{self.distribution} ({self.value})"


def entry_points(kind: str) -> dict[str, PluginEntry]:
    """The entry points of ``kind``'s group in the installed distributions, by name."""
    found: dict[str, PluginEntry] = {}
    if kind not in ENTRY_POINT_GROUPS:
        return found
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUPS[kind]):
        dist = getattr(ep, "dist", None)
        label = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
        found.setdefault(ep.name, PluginEntry(kind, ep.name, ep.value, label))
    return found


def load_entry(entry: PluginEntry, base: type) -> type:
    """The class an entry point names (importing its module), checked against ``base``."""
    return locate(entry.value, entry.kind, base,
                  f"{entry.kind} {entry.name!r} (entry point of {entry.distribution})")


def locate(target: Any, kind: str, base: type, where: str | None = None) -> type:
    """The component class ``target`` names (see the module docstring), checked to subclass
    ``base``. Raises ConfigError with one line for anything wrong."""
    where = where or f"{kind} {TARGET_KEY} {target!r}"
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(f"{kind} {TARGET_KEY} must be an import path such as "
                          f"'mypkg.module.MyClass', got {target!r}")
    target = target.strip()
    module_name, attr = _split(target, where)
    if ":" not in target and not module_name.endswith(".py"):
        module_name, attr = _longest_module(target, where)
    module = _import(module_name, where)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{where}: module {module.__name__!r} has no attribute "
                              f"{attr!r}") from None
    if not isinstance(obj, type) or not issubclass(obj, base):
        raise ConfigError(f"{where} is not a {kind}: expected a subclass of "
                          f"{base.__module__}.{base.__qualname__}, got {obj!r}")
    return obj


def _split(target: str, where: str) -> tuple[str, str]:
    """(module or file, attribute path) of ``pkg.mod.Class``, ``pkg.mod:Class``, ``f.py:Class``."""
    if ":" in target:
        module_name, _, attr = target.rpartition(":")
    else:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{where}: expected 'package.module.Class', 'package.module:Class' or "
                          f"'path/to/file.py:Class'")
    return module_name, attr


def _longest_module(target: str, where: str) -> tuple[str, str]:
    """(module, attribute path) of a dotted path: the longest prefix that imports (classes may
    nest, ``pkg.mod.Outer.Inner``)."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(f"{exc.name}.")):
                continue  # this prefix is not a module: try a shorter one
            break  # the module exists but fails to import: _import reports why
        except Exception:  # reported by _import below
            break
        return name, ".".join(parts[i:])
    return ".".join(parts[:-1]), parts[-1]


def _import(module_name: str, where: str) -> Any:
    if module_name.endswith(".py"):
        return _import_file(Path(module_name), where)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise ConfigError(f"{where} does not import: no module named {missing!r} (install "
                              f"its package, or put the folder holding it on PYTHONPATH)"
                              ) from None
        raise ConfigError(f"{where} does not import: {_describe(exc)}") from None
    except Exception as exc:  # the plug-in's own code failed while importing
        raise ConfigError(f"{where} does not import: {_describe(exc)}") from None


def _import_file(path: Path, where: str) -> Any:
    """A plug-in module loaded from a ``.py`` file (once per process and resolved path)."""
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        raise ConfigError(f"{where} does not import: no such file {str(path)!r} (relative paths "
                          f"start at the working directory)")
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"{_FILE_MODULE_PREFIX}{_identifier(resolved.stem)}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{where} does not import: {str(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and type hints look their module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"{where} does not import: {_describe(exc)}") from None
    return module


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _describe(exc: BaseException) -> str:
    """``Type: message (file:line)``, the line being the innermost frame of the failure."""
    text = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{message} ({exc.filename}:{exc.lineno})"
    if frames:
        last = frames[-1]
        return f"{message} ({last.filename}:{last.lineno})"
    return message


def target_label(target: str) -> str:
    """A short label for a ``_target_`` (its class name) for tables and summaries."""
    return target.replace(":", ".").rsplit(".", 1)[-1]
