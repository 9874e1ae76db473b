"""Checkpoints trained on demand and cached: the ``learned`` predictor's ``checkpoint: auto``.

A policy such as ``prophet`` names a predictor *recipe* (a ``conf/train/predictor`` config plus
``moe-train`` overrides), not a file. At ``reset`` the predictor asks :func:`obtain` for a model
of the run's shape; the first run trains it, later runs load it.

What it is trained on (``source``):

- ``preset``: the model's synthetic preset (``conf/trace/<model>.yaml``), generated with its own
  seed (``seed``, default 90001: not a seed runs use) and ``tokens`` tokens. The replayed trace's
  requests are never seen: same "model" (the preset's fixed routing structure), new requests.
- ``trace``: the trace the engine replays (every request). Optimistic: the run then replays its
  own training requests; the metadata says so (``trace.optimistic``).
- ``auto`` (default): ``preset`` when the replayed trace was generated from the model's preset
  (its provenance says so) or when there is no replayed trace, else ``trace`` - a recorded or
  imported trace carries routing no preset reproduces, so a preset-trained model would predict
  another model's routing.

Where it lives: ``$MOE_OFFLOAD_LAB_CACHE`` if set, else ``$XDG_CACHE_HOME/moe-offload-lab``, else
``~/.cache/moe-offload-lab``; under ``predictors/<model>/<recipe>-<key>.pt`` with its ``.json``.
The key hashes the training trace's identity (preset: the preset file's text, the generator
module's source, tokens and seed; trace: its routing fingerprint and feature checksum) together
with the complete training config and :data:`VERSION`, so a changed preset, generator or recipe
trains a new checkpoint and an unchanged one is loaded. Concurrent processes (a sweep's workers)
wait on a lock file and load what the first one wrote. Training traces of fewer than
:data:`DISK_MIN_EXAMPLES` examples (toy traces: a second to train) are kept in memory only.
Nothing here needs the network.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

ENV = "MOE_OFFLOAD_LAB_CACHE"
VERSION = 1  # bump when a change to the training code invalidates cached checkpoints
DISK_MIN_EXAMPLES = 20_000  # (tokens x MoE layers) below this: trained per process, not written
SOURCES = ("auto", "preset", "trace")
_MEMORY: dict[str, tuple[Any, dict[str, Any]]] = {}
_CONFIGS: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}


def cache_root() -> Path:
    """The folder of cached predictor checkpoints (see module docstring)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env) / "predictors"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moe-offload-lab" / "predictors"


@dataclass(frozen=True)
class Recipe:
    """How to train a checkpoint: ``predictor`` (a ``conf/train/predictor`` name), the training
    ``source`` (auto | preset | trace), the preset trace's ``tokens`` and generator ``seed``,
    and extra ``moe-train`` ``overrides`` (``train.epochs=10``, ``predictor.size=tiny``...)."""

    predictor: str = "history-transformer"
    source: str = "auto"
    tokens: int = 4000
    seed: int = 90001
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"train_source must be one of {', '.join(SOURCES)}, got "
                              f"{self.source!r}")
        if self.tokens < 1:
            raise ConfigError("train_tokens must be positive")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def preset_of(spec: ModelSpec, trace: Trace | None) -> str | None:
    """The synthetic preset a run's routing comes from, or None.

    With a replayed trace: the preset its provenance names, when the trace is synthetic and of
    the run's shape. Without one: the preset named like the model, if any."""
    from moe_offload_lab.traces.synthetic import presets

    known = set(presets())
    if trace is not None:
        prov = trace.provenance or {}
        name = prov.get("preset")
        if prov.get("source") == "synthetic" and name in known:
            return str(name)
        return None
    return spec.name if spec.name in known else None


def _preset_identity(name: str, tokens: int, seed: int) -> dict[str, Any]:
    from moe_offload_lab.traces import synthetic
    from moe_offload_lab.traces.catalog import conf_dir

    preset_file = conf_dir() / "trace" / f"{name}.yaml"
    return {"source": "preset", "preset": name, "tokens": tokens, "seed": seed,
            "preset_sha": _sha(preset_file.read_bytes()),
            "generator_sha": _sha(Path(synthetic.__file__).read_bytes())}


def _trace_identity(trace: Trace) -> dict[str, Any]:
    from moe_offload_lab.policies.learned.data import fingerprint

    features = None
    if trace.features is not None:
        features = _sha(np.ascontiguousarray(trace.features).tobytes())
    return {"source": "trace", "fingerprint": fingerprint(trace), "features": features}


def training_data(spec: ModelSpec, trace: Trace | None,
                  recipe: Recipe) -> tuple[dict[str, Any], Any]:
    """The identity of the training trace and a function that builds it (lazily: a cached
    checkpoint never needs it)."""
    source = recipe.source
    preset = preset_of(spec, trace) if source != "trace" else None
    if source == "preset" and preset is None:
        preset = spec.name if trace is None else preset_of(spec, None)
        if preset is None:
            raise ConfigError(f"learned predictor: no synthetic preset for model {spec.name!r} "
                              f"(train_source: preset); use train_source: trace or a "
                              f"checkpoint")
    if preset is not None:
        identity = _preset_identity(preset, recipe.tokens, recipe.seed)

        def build() -> tuple[Trace, dict[str, Any]]:
            from moe_offload_lab.traces.synthetic import generate

            generated = generate(preset, tokens=recipe.tokens, seed=recipe.seed)
            return generated, {"source": "synthetic", "preset": preset,
                               "tokens": recipe.tokens, "seed": recipe.seed}
        return identity, build
    if trace is None:
        raise ConfigError(f"learned predictor (checkpoint: auto): model {spec.name!r} has no "
                          f"synthetic preset and no trace is replayed to train on; give "
                          f"checkpoint: PATH (a moe-train .pt)")
    identity = _trace_identity(trace)
    return identity, lambda: (trace, {"source": "replayed trace", "optimistic": True,
                                      "provenance": trace.provenance})


def training_config(recipe: Recipe) -> dict[str, Any]:
    """The composed ``conf/train`` config of ``recipe`` (quiet: no progress bar); composed once
    per process and recipe."""
    key = (recipe.predictor, recipe.overrides)
    if key not in _CONFIGS:
        from moe_offload_lab.policies.learned.cli import compose

        _CONFIGS[key] = compose([f"predictor={recipe.predictor}", "progress=false",
                                 *recipe.overrides])
    return copy.deepcopy(_CONFIGS[key])


def checkpoint_key(identity: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The cache key: the training trace's identity, the training config, :data:`VERSION`."""
    relevant = {k: cfg[k] for k in ("predictor", "context", "horizon", "split", "train")}
    text = json.dumps({"version": VERSION, "trace": identity, "config": relevant},
                      sort_keys=True, default=str)
    return _sha(text.encode())


def obtain(spec: ModelSpec, trace: Trace | None, recipe: Recipe,
           progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """A trained model for ``spec`` following ``recipe``: loaded from the cache, or trained now
    (and cached). Returns ``(model, metadata)``; the metadata has ``cache_path`` (None when kept
    in memory only)."""
    from moe_offload_lab.policies.learned import checkpoint

    cfg = training_config(recipe)
    identity, build = training_data(spec, trace, recipe)
    key = checkpoint_key(identity, cfg)
    name = cfg["predictor"]["name"]
    path = cache_root() / _safe(spec.name) / f"{_safe(name)}-{key}.pt"
    if key in _MEMORY:
        return _MEMORY[key]
    if checkpoint.meta_path(path).is_file():
        return checkpoint.load(path)
    n_examples = (recipe.tokens if identity["source"] == "preset"
                  else (trace.num_tokens if trace is not None else 0)) * spec.num_moe_layers
    if n_examples < DISK_MIN_EXAMPLES:
        model, meta = _train(build, _quick(cfg), identity, key, None, progress=False,
                             score_test=False)
        _MEMORY[key] = (model, meta)
        return model, meta
    with _locked(path.with_suffix(".lock")):
        if checkpoint.meta_path(path).is_file():  # another process trained it meanwhile
            return checkpoint.load(path)
        if progress:
            print(f"moe-offload-lab: training the {name!r} predictor for {spec.name} on "
                  f"{_describe(identity)} (first use; cached as {path})", file=sys.stderr)
        model, meta = _train(build, cfg, identity, key, path, progress)
        checkpoint.save(path, model, meta)
    return model, meta


def _train(build: Any, cfg: dict[str, Any], identity: dict[str, Any], key: str,
           path: Path | None, progress: bool,
           score_test: bool = True) -> tuple[Any, dict[str, Any]]:
    from moe_offload_lab.policies.learned.cli import train_on

    trace, provenance = build()
    cfg = {**cfg, "progress": progress}
    if len(np.unique(trace.request_id)) < 3:  # too few to hold any out: every request trains
        cfg["split"] = {**cfg["split"], "val": 0.0, "test": 0.0}
    model, meta = train_on(trace, provenance, cfg, score_test)
    meta["auto"] = {"key": key, "identity": identity, "cache_path": None if path is None
                    else str(path), "version": VERSION}
    model.eval()
    return model, meta


def _quick(cfg: dict[str, Any]) -> dict[str, Any]:
    """A toy trace's training config: a short cost measurement (its held-out scores are not
    computed either: a toy trace trains in a second and nobody reads them)."""
    return {**cfg, "cost": {**cfg["cost"], "repeats": 5, "warmup": 2}}


def _describe(identity: dict[str, Any]) -> str:
    if identity["source"] == "preset":
        return (f"its synthetic preset ({identity['tokens']} tokens, seed {identity['seed']})")
    return "the replayed trace (optimistic: the run replays its training requests)"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """An exclusive lock on ``lock`` (POSIX ``flock``; no lock where unavailable)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def entries(root: Path | None = None) -> Sequence[dict[str, Any]]:
    """The cached checkpoints' metadata summaries (model, recipe, source, path), for listing."""
    root = root or cache_root()
    out = []
    for meta_file in sorted(root.glob("*/*.json")):
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        auto = meta.get("auto", {})
        out.append({"model": meta.get("spec", {}).get("name"), "predictor": meta.get("name"),
                    "source": auto.get("identity", {}).get("source"),
                    "path": str(meta_file.with_suffix(".pt"))})
    return out
