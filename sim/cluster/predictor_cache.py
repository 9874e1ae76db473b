"""PROBE's learned predictor for a cluster run: ``checkpoint: auto`` trains one once and caches it.

A balance config ``{name: probe, checkpoint: auto}`` (PROBE as ``conf/balance/probe.yaml``
has it) needs a ``probe`` model trained
with ``prior: lookahead`` on the run's model. :func:`resolve_checkpoints` replaces ``auto`` with
a checkpoint under ``outputs/cache/probe-predictor/<key>/model.pt``, training it first when the
cache does not have it:

- for a synthetic trace, on a fresh trace of the same preset, overrides and volatility drawn with
  another seed (``seed + 1000``): new requests, the same "model"; twice the run's tokens, at
  least 1,000 and at most 6,000;
- for a recorded trace (a file or a bundled trace), on the training split of that trace (by
  request); the run then replays those requests too, which flatters the predictor (said in the
  summary's ``balance_params``).

The key hashes what the training depends on (the training trace's routing fingerprint and the
training settings), so a later run with the same settings loads the cached model and any change
of the generator or the preset trains a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace

CACHE_DIR = Path("outputs") / "cache" / "probe-predictor"
TRAIN_TOKENS = 6000
TRAIN = {"epochs": 8, "hidden": 32, "seed": 0}


def _needs_training(balance: Any) -> bool:
    from moe_offload_lab.policies.balancing.registry import load_balancer_config

    if isinstance(balance, str):
        data = load_balancer_config(balance)
    elif isinstance(balance, Mapping):
        data = {**(load_balancer_config(balance["name"]) if "name" in balance else {}),
                **balance}
    else:
        return False
    return data.get("predictor") == "learned" and data.get("checkpoint") == "auto"


def resolve_checkpoints(balances: list[Any], trace_config: Mapping[str, Any], model: str,
                        recorded: Trace | None = None,
                        cache_dir: Path = CACHE_DIR) -> list[Any]:
    """The balance configs with ``checkpoint: auto`` replaced by a cached (trained if need be)
    checkpoint path; the others unchanged."""
    out = []
    for balance in balances:
        if not _needs_training(balance):
            out.append(balance)
            continue
        path = _checkpoint(trace_config, model, recorded, cache_dir)
        base = {"name": balance} if isinstance(balance, str) else dict(balance)
        out.append({**base, "checkpoint": str(path)})
    return out


def _checkpoint(trace_config: Mapping[str, Any], model: str, recorded: Trace | None,
                cache_dir: Path) -> Path:
    from moe_offload_lab.policies.balancing.learned_load import train_lookahead_model
    from moe_offload_lab.policies.learned.data import fingerprint
    from moe_offload_lab.sim.cluster.workloads import build_trace

    if recorded is not None:
        trace = recorded
    else:
        config = dict(trace_config)
        seed = int(config.get("seed", 0)) + 1000
        tokens = int(config.get("tokens") or TRAIN_TOKENS)
        config.update(seed=seed, tokens=min(TRAIN_TOKENS, max(1000, 2 * tokens)))
        config.pop("requests", None)
        if config.get("volatile"):
            config["volatile"] = {**config["volatile"], "seed": seed}
        trace = build_trace(config, model)
    # the key is the training trace itself (any change of generator or preset retrains)
    key = hashlib.sha256(json.dumps({"trace": fingerprint(trace), **TRAIN}, sort_keys=True)
                         .encode()).hexdigest()[:16]
    path = cache_dir / key / "model.pt"
    if path.is_file() and path.with_suffix(".json").is_file():
        return path
    if trace.features is None:
        raise ConfigError(f"PROBE's learned predictor (checkpoint: auto) trains on hidden-state "
                          f"features and the {model} trace has none; balance=probe-gate runs "
                          f"PROBE with the gate prior alone")
    print(f"training PROBE's lookahead predictor for {model} (cached in {path.parent})")
    return train_lookahead_model(trace, path, epochs=TRAIN["epochs"], hidden=TRAIN["hidden"],
                                 seed=TRAIN["seed"])
