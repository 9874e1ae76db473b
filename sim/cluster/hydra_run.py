"""Expert-parallel runs from ``moe-sim``'s composed config (``moe-sim cluster=<name> ...``).

The ``cluster`` and ``balance`` groups of ``conf/config.yaml`` pick the cluster and the balancing
policy; ``model`` (every field, overrides included: ``model.expert_bytes_per_param=1.0`` runs
FP8 experts), ``trace`` (preset, tokens, seed, overrides, volatile; or a trace file / bundled
trace), ``batch`` and ``prefill`` mean what they mean for single-GPU runs, and
``cache.strict_memory=true`` refuses a run whose weights do not fit a rank's GPU (as it refuses
a single-GPU run that does not fit). The other offloading settings (``policy``, the rest of
``cache``, ``host``, ``link``) do not apply to an expert-parallel run. With ``compare`` set
(``experiment=probe``) the run is a comparison of balancing policies
(:mod:`sim.cluster.compare`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from moe_offload_lab.sim.cli import memory_note
from moe_offload_lab.sim.cluster.predictor_cache import resolve_checkpoints
from moe_offload_lab.sim.cluster.simulate import simulate_cluster
from moe_offload_lab.traces.errors import ConfigError

if TYPE_CHECKING:
    from moe_offload_lab.sim.cluster.result import ClusterResult
    from moe_offload_lab.sim.run import RunConfig
    from moe_offload_lab.traces.format import Trace

_TRACE_KEYS = ("preset", "tokens", "seed", "volatile", "overrides")
_SHOWN = ("model", "expert_bytes_per_param", "cluster", "balance", "oracle", "pool", "steps",
          "imbalance_before_mean", "imbalance_after_mean", "imbalance_after_p99",
          "prefill_latency_ms_mean", "decode_tokens_per_s", "replica_copies", "replica_bytes",
          "stall_s", "plan_wait_s", "decision_s", "total_s", "weights_per_rank_gib",
          "gpu_memory_needed_gb", "gpu_memory_gb", "fits_gpu_memory", "sim_wall_s")


def cluster_config(cfg: RunConfig) -> dict[str, Any]:
    """The :func:`~sim.cluster.simulate.simulate_cluster` mapping of a composed config."""
    trace = cfg.trace or {}
    synthetic = {k: trace[k] for k in _TRACE_KEYS if trace.get(k) is not None}
    if cfg.workload and cfg.workload.get("kind", "static") != "static":
        raise ConfigError("expert-parallel runs use static batches (workload=static)")
    return {"cluster": cfg.cluster, "model": dict(cfg.model),
            "balance": cfg.balance or "static", "trace": synthetic, "batch": cfg.batch,
            "prefill": bool(cfg.prefill),
            "strict_memory": bool((cfg.cache or {}).get("strict_memory", False))}


def check_cluster(cfg: RunConfig) -> None:
    """Check the cluster, balancing (every compared one) and model configs without running."""
    from moe_offload_lab.policies.balancing import load_balancer
    from moe_offload_lab.sim.cluster.compare import comparison_runs
    from moe_offload_lab.sim.cluster.config import load_cluster
    from moe_offload_lab.sim.cluster.simulate import _model, memory_per_rank

    config = cluster_config(cfg)
    cluster = load_cluster(config["cluster"])
    spec = _model(config["model"])
    balances = [run["balance"] for run in comparison_runs(cfg.compare)] if cfg.compare \
        else [config["balance"]]
    for balance in balances:
        policy = load_balancer(balance)
        memory = memory_per_rank(spec, cluster, policy.pool)
        if config["strict_memory"] and not memory["fits_gpu_memory"]:
            raise ConfigError(f"{memory['gpu_memory_needed_gb']:.1f} GB of weights per rank do "
                              f"not fit in {cluster.gpu}'s {memory['gpu_memory_gb']:.1f} GB "
                              f"(cache.strict_memory is set)")


def _recorded(cfg: RunConfig) -> Trace | None:
    """The trace file or bundled trace of the config, if it names one."""
    from moe_offload_lab.sim.run import _load_trace
    from moe_offload_lab.traces.spec import ModelSpec

    trace = cfg.trace or {}
    if trace.get("path") or trace.get("bundled"):
        return _load_trace(cfg, ModelSpec.from_dict(cfg.model))
    return None


def simulate_cluster_run(cfg: RunConfig) -> ClusterResult:
    """Run the expert-parallel simulation of a composed config (trace files included)."""
    return simulate_cluster(cluster_config(cfg), trace=_recorded(cfg))


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def run_cluster(cfg: RunConfig, out: str | Path, timeline: bool = True) -> list[str]:
    """Run a composed expert-parallel config (one run, or a comparison when ``compare`` is
    set), write its outputs into ``out`` (``timeline.json`` of a single run only when
    ``timeline``) and return the lines to print."""
    if cfg.compare:
        return _run_comparison(cfg, Path(out))
    result = simulate_cluster_run(cfg)
    paths = result.write(out, timeline=timeline)
    lines = [f"{key:<32}{_number(result.summary.get(key))}" for key in _SHOWN]
    note = memory_note([result.summary])
    return [*lines, *([note] if note else []), f"wrote {', '.join(str(p) for p in paths)}"]


def _run_comparison(cfg: RunConfig, out: Path) -> list[str]:
    from moe_offload_lab.sim.cluster.compare import (
        comparison_runs,
        comparison_table,
        headline,
        write_cluster_comparison,
    )
    from moe_offload_lab.sim.cluster.workloads import build_trace
    from moe_offload_lab.sim.compare import text_table
    from tqdm import tqdm

    spec = dict(cfg.compare or {})
    runs = comparison_runs(spec)
    config = cluster_config(cfg)
    trace = _recorded(cfg)
    synthetic = trace is None
    if trace is None:
        trace = build_trace(config["trace"], config["model"]["name"])
    balances = resolve_checkpoints([run["balance"] for run in runs], config["trace"],
                                   config["model"]["name"], None if synthetic else trace)
    summaries, results = [], {}
    for run, balance in tqdm(list(zip(runs, balances, strict=True)), desc="compare",
                             unit="run", leave=False, disable=None):
        result = simulate_cluster({**config, "balance": balance}, trace=trace)
        label = run["balance"] if isinstance(run["balance"], str) else result.summary["balance"]
        summaries.append({"label": run["label"], "balance_label": label, **result.summary})
        results[run["label"]] = result
    table = comparison_table(spec, summaries)
    paths = write_cluster_comparison(spec, table, summaries, results, out)
    first = summaries[0]
    lines = [f"{first['model']} ({first['expert_bytes_per_param']:g} bytes per expert parameter) "
             f"on {first['cluster']} ({first['ranks']} x {first['gpu']}, R="
             f"{first['redundant_slots']}), {first['trace_tokens']} tokens, batch "
             f"{first['batch']}", text_table(table), *headline(spec, table)]
    note = memory_note(summaries)
    return [*lines, *([note] if note else []), f"wrote {', '.join(str(p) for p in paths)}"]
