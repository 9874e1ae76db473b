"""Checkpoints: ``<name>.pt`` (the state dict) and ``<name>.json`` (metadata) side by side.

The metadata holds what is needed to rebuild and judge the model: ``model`` (kind, Shape,
hyperparameters), ``spec`` (the trace's ModelSpec), ``trace`` (provenance, fingerprint, the
request ids of each split), ``train`` (hyperparameters and loss history), ``metrics`` (held-out
test metrics), ``cost`` (measured inference time and the fitted DecisionCost) and ``versions``.
Both files are written atomically (the JSON last, so a complete JSON means a complete pair).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from moe_offload_lab.policies.learned.models.base import LearnedModel, build_model
from moe_offload_lab.traces.atomic import atomic_path, write_text
from moe_offload_lab.traces.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def meta_path(path: str | Path) -> Path:
    """The metadata file beside a ``.pt`` checkpoint."""
    return Path(path).with_suffix(".json")


def resolve(path: str | Path) -> Path:
    """A checkpoint path as given, else relative to the project root (so the committed
    ``policies/learned/checkpoints/*.pt`` work from any working directory)."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    alt = PROJECT_ROOT / p
    return alt if alt.is_file() else p


def save(path: str | Path, model: LearnedModel, meta: dict[str, Any]) -> Path:
    """Write ``path`` (.pt) and its ``.json`` atomically; returns ``path``."""
    path = Path(path)
    meta = {**meta, "model": model.config()}
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    write_text(meta_path(path), json.dumps(meta, indent=2, default=_json_default) + "\n")
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of checkpoint ``path`` (ConfigError when missing or unreadable)."""
    path = resolve(path)
    meta_file = meta_path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    if not meta_file.is_file():
        raise ConfigError(f"checkpoint metadata not found: {meta_file}")
    try:
        return json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"checkpoint metadata {meta_file} is not valid JSON: {exc}") from None


def load(path: str | Path) -> tuple[LearnedModel, dict[str, Any]]:
    """Rebuild the model of checkpoint ``path`` in eval mode, with its metadata."""
    path = resolve(path)
    meta = read_meta(path)
    try:
        cfg = meta["model"]
        model = build_model(cfg["kind"], cfg["shape"], **cfg["hp"])
    except KeyError as exc:
        raise ConfigError(f"checkpoint metadata {meta_path(path)} lacks {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, ValueError) as exc:
        raise ConfigError(f"checkpoint {path} cannot be loaded: "
                          f"{str(exc).strip().splitlines()[0]}") from None
    return model.eval(), meta


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
