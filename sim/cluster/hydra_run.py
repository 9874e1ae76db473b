"""Expert-parallel runs from ``moe-sim``'s composed config (``moe-sim cluster=<name> ...``).

The ``cluster`` and ``balance`` groups of ``conf/config.yaml`` pick the cluster and the balancing
policy; ``model``, ``trace`` (preset, tokens, seed, volatile; or a trace file / bundled trace),
``batch`` and ``prefill`` mean what they mean for single-GPU runs. The offloading groups
(``policy``, ``cache``, ``host``, ``link``) do not apply to an expert-parallel run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moe_offload_lab.sim.cluster.simulate import simulate_cluster
from moe_offload_lab.traces.errors import ConfigError

if TYPE_CHECKING:
    from moe_offload_lab.sim.cluster.result import ClusterResult
    from moe_offload_lab.sim.run import RunConfig

_TRACE_KEYS = ("preset", "tokens", "seed", "volatile")


def cluster_config(cfg: RunConfig) -> dict[str, Any]:
    """The :func:`~sim.cluster.simulate.simulate_cluster` mapping of a composed config."""
    trace = cfg.trace or {}
    synthetic = {k: trace[k] for k in _TRACE_KEYS if trace.get(k) is not None}
    if cfg.workload and cfg.workload.get("kind", "static") != "static":
        raise ConfigError("expert-parallel runs use static batches (workload=static)")
    return {"cluster": cfg.cluster, "model": cfg.model["name"], "balance": cfg.balance or "static",
            "trace": synthetic, "batch": cfg.batch, "prefill": bool(cfg.prefill)}


def check_cluster(cfg: RunConfig) -> None:
    """Check the cluster and balancing configs without running anything."""
    from moe_offload_lab.policies.balancing import load_balancer
    from moe_offload_lab.sim.cluster.config import load_cluster

    load_cluster(cfg.cluster)
    load_balancer(cfg.balance or "static")
    cluster_config(cfg)


def simulate_cluster_run(cfg: RunConfig) -> ClusterResult:
    """Run the expert-parallel simulation of a composed config (trace files included)."""
    from moe_offload_lab.sim.run import _load_trace
    from moe_offload_lab.traces.spec import ModelSpec

    trace = cfg.trace or {}
    recorded = None
    if trace.get("path") or trace.get("bundled"):
        recorded = _load_trace(cfg, ModelSpec.from_dict(cfg.model))
    return simulate_cluster(cluster_config(cfg), trace=recorded)
