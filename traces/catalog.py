"""Finding bundled configuration: model specs (``conf/model``) and trace presets (``conf/trace``).

The ``conf/`` folder sits beside the packages at the repository root (the README installs the
project in editable mode, so it is found from the installed package too). ``MOE_LAB_CONF`` points
somewhere else when a user keeps their own catalog.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.spec import ModelSpec


def conf_dir() -> Path:
    """The configuration root (``$MOE_LAB_CONF`` or ``<repo>/conf``)."""
    override = os.environ.get("MOE_LAB_CONF")
    root = Path(override) if override else Path(__file__).resolve().parent.parent / "conf"
    if not root.is_dir():
        raise ConfigError(f"configuration folder not found: {root} (set MOE_LAB_CONF)")
    return root


def available(group: str) -> list[str]:
    """Names of the YAML configs in one group (``model``, ``trace``...), sorted."""
    folder = conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_yaml(group: str, name: str) -> dict[str, Any]:
    """Read ``conf/<group>/<name>.yaml`` as a dict, with a clear error for unknown names."""
    path = conf_dir() / group / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(available(group)) or "none"
        raise ConfigError(f"unknown {group} {name!r}; available: {names}")
    return read_yaml_file(path)


def read_yaml_file(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping, turning syntax errors into one-line ConfigErrors."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_named_or_path(group: str, name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    """A config of ``group`` by name (``conf/<group>/<name>.yaml``) or any YAML file by path.

    Returns the mapping and a label for error messages.
    """
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"{group} config {text}: no such file")
        return read_yaml_file(path), text
    return load_yaml(group, text), f"{group} {text!r}"


def load_model(name: str, **overrides: Any) -> ModelSpec:
    """The ModelSpec of a bundled model (``mixtral-8x7b``...), optionally with fields overridden."""
    spec = ModelSpec.from_dict(load_yaml("model", name))
    return spec.with_overrides(**overrides) if overrides else spec


def check_fields(cls: type, data: Mapping[str, Any], where: str,
                 required: Sequence[str] | None = None) -> None:
    """Reject a mapping meant for dataclass ``cls`` with one line when it names unknown fields or
    lacks a ``required`` one (default: every field without a default)."""
    fields = dataclasses.fields(cls)
    unknown = sorted(set(data) - {f.name for f in fields})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if required is None:
        required = [f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}")
