"""The balance-policy registry and ``conf/balance/<name>.yaml`` loading.

A YAML config names the registered class under ``policy`` and lists its parameters::

    policy: probe
    description: PROBE-style predictive replication with the gate-lookahead predictor.
    predictor: lookahead

:func:`load_balancer` takes a config name, a YAML path, or a mapping: either
``{name: <config name>, <overrides>}`` or ``{policy: <registered name>, <params>}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moe_offload_lab.policies.registry import Registry
from moe_offload_lab.traces.catalog import available, load_named_or_path
from moe_offload_lab.traces.errors import ConfigError

BALANCERS = Registry("balance policy", "moe_offload_lab.policies.balancing")


def available_balancers() -> list[str]:
    """Names of the bundled balance configs (``conf/balance``)."""
    return available("balance")


def load_balancer(config: str | Mapping[str, Any] | None) -> Any:
    """Build a :class:`~policies.balancing.base.BalancePolicy` from a name, path or mapping."""
    if config is None:
        config = "static"
    if isinstance(config, str):
        if config not in available_balancers() and not config.endswith((".yaml", ".yml")) \
                and "/" not in config:
            raise ConfigError(f"unknown balance {config!r}; available: "
                              f"{', '.join(available_balancers()) or 'none'}")
        data, _ = load_named_or_path("balance", config)
        merged: dict[str, Any] = dict(data)
    elif isinstance(config, Mapping):
        merged = dict(config)
        if "name" in merged:
            name = merged.pop("name")
            if not isinstance(name, str):
                raise ConfigError(f"balance name must be a string, got {name!r}")
            base = load_balancer_config(name)
            merged = {**base, **merged}
    else:
        raise ConfigError(f"balance config must be a name or a mapping, got "
                          f"{type(config).__name__}")
    merged.pop("description", None)
    if "policy" not in merged:
        raise ConfigError("balance config lacks 'policy' (a registered balance policy: "
                          f"{', '.join(BALANCERS.names())})")
    policy = merged.pop("policy")
    return BALANCERS.build({"name": policy, **merged})


def load_balancer_config(name: str) -> dict[str, Any]:
    """The mapping of ``conf/balance/<name>.yaml`` (a one-line ConfigError when unknown)."""
    if name not in available_balancers() and not name.endswith((".yaml", ".yml")) \
            and "/" not in name:
        raise ConfigError(f"unknown balance {name!r}; available: "
                          f"{', '.join(available_balancers()) or 'none'}")
    data, _ = load_named_or_path("balance", name)
    return dict(data)
