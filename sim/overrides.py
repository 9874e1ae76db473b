"""Overrides that would not reach the run they name: refused before anything runs.

Hydra composes whatever it is given, and the composed config carries defaults for every group,
so some command-line settings can be accepted and then never read: ``trace.tokens`` with a
trace file, ``cache.fraction`` under an explicit ``cache.slots``, ``policy=...`` in the bundled
comparison (whose runs name their own policies), ``batch`` under continuous batching with its
own ``workload.max_batch``, ``balance=...`` without ``cluster=...``. :func:`check_overrides`
turns each such case into one :class:`~traces.errors.ConfigError`; settings that the groups
themselves cannot use (an unknown key, a continuous-only workload key under static batching, a
lookahead policy on a trace without lookahead) are refused by :func:`sim.run.prepare`.
Expert-parallel runs (``cluster=...``) check their own settings (:mod:`sim.cluster`).
"""

from __future__ import annotations

from collections.abc import Sequence

from moe_offload_lab.sim.run import RunConfig
from moe_offload_lab.traces.errors import ConfigError

_SYNTHETIC_ONLY = ("trace.tokens", "trace.seed", "trace.preset")
# cache sizes by precedence: a key given with an earlier one present is never read
_CACHE_SIZES = ("cache.slots", "cache.gpu_memory_gb", "cache.fraction")


def override_keys(overrides: Sequence[str]) -> set[str]:
    """The config keys the overrides set (``+``/``~`` stripped, Hydra's own left out)."""
    keys = {item.split("=", 1)[0].lstrip("+~") for item in overrides}
    return {k for k in keys if k and not k.startswith("hydra")}


def _given(keys: set[str], key: str) -> bool:
    return key in keys or any(k.startswith(f"{key}.") for k in keys)


def check_overrides(overrides: Sequence[str], cfg: RunConfig) -> None:
    """Raise ConfigError when an explicit override of ``overrides`` would be ignored by the run
    that ``cfg`` (their composition) describes."""
    keys = override_keys(overrides)
    trace = cfg.trace or {}
    if trace.get("path") and trace.get("bundled"):
        raise ConfigError("give trace.path or trace.bundled, not both")
    source = next((f"trace.{k}" for k in ("path", "bundled") if trace.get(k)), None)
    if source:
        unused = [k for k in _SYNTHETIC_ONLY if k in keys]
        if unused:
            raise ConfigError(f"{unused[0]} configures a synthetic trace, but {source} reads a "
                              f"recorded one; drop {unused[0]}")
    sizes = [k for k in _CACHE_SIZES if k in keys]
    cache = cfg.cache or {}
    for lower in sizes:
        higher = [k for k in _CACHE_SIZES[:_CACHE_SIZES.index(lower)]
                  if cache.get(k.split(".", 1)[1]) is not None]
        if higher:
            raise ConfigError(f"{lower} is ignored when {higher[0]} is set (precedence: "
                              f"{', '.join(_CACHE_SIZES)}); give one of them")
    if cfg.compare is not None and _given(keys, "policy"):
        raise ConfigError("experiment=compare runs the policies listed in compare.runs; drop "
                          "policy=... (or drop experiment=compare for one run)")
    workload = cfg.workload or {}
    if (workload.get("kind") == "continuous" and "batch" in keys
            and workload.get("max_batch") is not None):
        raise ConfigError(f"batch sizes static batches; continuous batching runs up to "
                          f"workload.max_batch={workload['max_batch']} requests: set that instead")
    if cfg.cluster is None and _given(keys, "balance"):
        raise ConfigError("balance=... is the balancing policy of expert-parallel runs; it "
                          "needs cluster=<name>")
