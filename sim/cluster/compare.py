"""A comparison of balancing policies on one expert-parallel setup (``moe-sim experiment=probe``).

The config's ``compare`` mapping lists the runs, each ``{label, balance}`` (a ``conf/balance``
name or mapping), the ``baseline`` label, and optionally a paper's headline figures to print
beside the simulator's::

    compare:
      baseline: static-ep
      reference: eplb-r2             # a second baseline (speedups against it too)
      paper: {name: PROBE, prefill_speedup: 1.32, decode_speedup: 1.26}
      runs: [{label: static-ep, balance: static}, {label: probe, balance: probe}]

Every run uses the same trace (built once) and cluster. The table has one row per run: the
``label`` and metric columns (imbalance before and after balancing, prefill latency, decode
throughput, their ratios to the baseline and the reference, replica traffic, exposed copy and
decision time, memory). Outputs: ``compare.csv``, ``compare.md``, ``compare.png``,
``summaries.json`` and each run's files under ``runs/<label>/``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from moe_offload_lab.sim.cluster.result import ClusterResult
from moe_offload_lab.sim.compare import parse_runs
from moe_offload_lab.traces.atomic import atomic_path, write_text
from moe_offload_lab.traces.errors import ConfigError

RUNS_DIR = "runs"
COLUMNS = ("label", "balance", "imbalance_before_mean", "imbalance_after_mean",
           "imbalance_after_p99", "prefill_latency_ms_mean", "decode_tokens_per_s",
           "prefill_speedup", "decode_speedup", "prefill_speedup_vs_ref", "decode_speedup_vs_ref",
           "replica_copies", "replica_gb", "stall_ms", "plan_wait_ms", "fits_gpu_memory",
           "weights_per_rank_gib", "sim_wall_s")
PAPER_KEYS = ("name", "prefill_speedup", "decode_speedup", "source")


def comparison_runs(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``{label, balance}`` runs of a ``compare`` mapping (checked)."""
    out = parse_runs(spec, "balance")
    labels = [r["label"] for r in out]
    for key in ("baseline", "reference"):
        if spec.get(key) is not None and spec[key] not in labels:
            raise ConfigError(f"compare.{key} {spec[key]!r} is not one of the runs' labels")
    paper = spec.get("paper") or {}
    if not isinstance(paper, Mapping) or set(paper) - set(PAPER_KEYS):
        raise ConfigError(f"compare.paper must be a mapping with keys {', '.join(PAPER_KEYS)}")
    return out


def _ratio(value: float | None, base: float | None, higher_is_better: bool) -> float | None:
    if not value or not base:
        return None
    return value / base if higher_is_better else base / value


def comparison_table(spec: Mapping[str, Any],
                     summaries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run (:data:`COLUMNS`); speedups are ``baseline / run`` for prefill latency
    and ``run / baseline`` for decode throughput (above 1: the run is faster)."""
    by_label = {s["label"]: s for s in summaries}
    base = by_label[spec.get("baseline") or summaries[0]["label"]]
    ref = by_label.get(spec.get("reference")) if spec.get("reference") else None
    rows = []
    for s in summaries:
        prefill, decode = s.get("prefill_latency_ms_mean"), s.get("decode_tokens_per_s")
        rows.append({
            "label": s["label"], "balance": s["balance_label"],
            "imbalance_before_mean": s["imbalance_before_mean"],
            "imbalance_after_mean": s["imbalance_after_mean"],
            "imbalance_after_p99": s["imbalance_after_p99"],
            "prefill_latency_ms_mean": prefill, "decode_tokens_per_s": decode,
            "prefill_speedup": _ratio(prefill, base.get("prefill_latency_ms_mean"), False),
            "decode_speedup": _ratio(decode, base.get("decode_tokens_per_s"), True),
            "prefill_speedup_vs_ref": _ratio(prefill, ref.get("prefill_latency_ms_mean"), False)
            if ref else None,
            "decode_speedup_vs_ref": _ratio(decode, ref.get("decode_tokens_per_s"), True)
            if ref else None,
            "replica_copies": s["replica_copies"], "replica_gb": s["replica_bytes"] / 1e9,
            "stall_ms": s["stall_s"] * 1e3, "plan_wait_ms": s["plan_wait_s"] * 1e3,
            "fits_gpu_memory": s["fits_gpu_memory"],
            "weights_per_rank_gib": s["weights_per_rank_gib"], "sim_wall_s": s["sim_wall_s"]})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def paper_lines(spec: Mapping[str, Any], table: pd.DataFrame, label: str) -> list[str]:
    """The paper's headline figures beside the simulator's for run ``label``."""
    paper = spec.get("paper") or {}
    if not paper or label not in set(table["label"]):
        return []
    row = table.set_index("label").loc[label]
    name = paper.get("name", label)
    lines = [f"{name} headline (paper, 'up to') against the simulator's {label!r}:"]
    for key, what in (("prefill_speedup", "prefill latency reduction"),
                      ("decode_speedup", "decode throughput gain")):
        if paper.get(key) is None:
            continue
        sim = [f"{row[key]:.3f}x vs {spec.get('baseline') or table['label'].iloc[0]}"
               if row[key] == row[key] and row[key] is not None else "-"]
        ref_key = f"{key}_vs_ref"
        if spec.get("reference") and row[ref_key] is not None and row[ref_key] == row[ref_key]:
            sim.append(f"{row[ref_key]:.3f}x vs {spec['reference']}")
        lines.append(f"  {what:28s} paper {float(paper[key]):.2f}x   simulator "
                     f"{', '.join(sim)}")
    if paper.get("source"):
        lines.append(f"  source: {paper['source']}")
    return lines


def plot_cluster_comparison(table: pd.DataFrame, path: str | Path, title: str,
                            paper: Mapping[str, Any] | None = None) -> Path:
    """Three panels per run: imbalance before/after, prefill speedup, decode speedup (the
    paper's figures as dashed lines)."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sns.set_theme(style="whitegrid", context="paper")
    fig = Figure(figsize=(12, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    imb = table.melt(id_vars="label", value_vars=["imbalance_before_mean",
                                                  "imbalance_after_mean"],
                     var_name="when", value_name="imbalance")
    imb["when"] = imb["when"].map({"imbalance_before_mean": "static placement",
                                   "imbalance_after_mean": "after balancing"})
    sns.barplot(data=imb, x="label", y="imbalance", hue="when", ax=axes[0])
    axes[0].set(title="max / mean rank load (mean)", xlabel="", ylim=(0.9, None))
    for ax, key, what in ((axes[1], "prefill_speedup", "prefill latency speedup"),
                          (axes[2], "decode_speedup", "decode throughput speedup")):
        sns.barplot(data=table, x="label", y=key, ax=ax, color=sns.color_palette()[2])
        ax.axhline(1.0, color="grey", linewidth=0.8)
        if paper and paper.get(key) is not None:
            ax.axhline(float(paper[key]), color="crimson", linestyle="--", linewidth=1,
                       label=f"{paper.get('name', 'paper')}: up to {float(paper[key]):.2f}x")
            ax.legend(loc="lower right")
        ax.set(title=what, xlabel="", ylabel="x over baseline")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_cluster_comparison(spec: Mapping[str, Any], table: pd.DataFrame,
                             summaries: list[dict[str, Any]],
                             results: dict[str, ClusterResult], out: str | Path) -> list[Path]:
    """Write ``compare.csv``, ``compare.md``, ``compare.png``, ``summaries.json`` and each
    run's files under ``runs/<label>/`` into ``out`` (every file atomically)."""
    from moe_offload_lab.sim.compare import markdown, run_folder

    out = Path(out)
    for label, result in results.items():
        result.write(out / RUNS_DIR / run_folder(label))
    with atomic_path(out / "compare.csv") as tmp:
        table.to_csv(tmp, index=False)
    first = summaries[0]
    title = (f"{first['model']} ({first['expert_bytes_per_param']:g} B/param experts) on "
             f"{first['cluster']}, R={first['redundant_slots']}, {first['trace_tokens']} tokens, "
             f"batch {first['batch']}")
    md = markdown(table.rename(columns={"label": "policy"})).replace("| policy |", "| label |",
                                                                      1)
    lines = paper_lines(spec, table, _headline_label(spec, table))
    if lines:
        md += "\n" + "\n".join(f"    {line}" for line in lines) + "\n"
    return [out / "compare.csv", write_text(out / "compare.md", md),
            plot_cluster_comparison(table, out / "compare.png", title, spec.get("paper")),
            write_text(out / "summaries.json", json.dumps(summaries, indent=2, default=str))]


def _headline_label(spec: Mapping[str, Any], table: pd.DataFrame) -> str:
    """The run the paper's figures are compared with: ``paper.name`` lower-cased if it is a
    label, else the first label starting with it, else the last run."""
    name = str((spec.get("paper") or {}).get("name", "")).lower()
    labels = list(table["label"])
    if name in labels:
        return name
    return next((lab for lab in labels if name and lab.lower().startswith(name)), labels[-1])


def headline(spec: Mapping[str, Any], table: pd.DataFrame) -> list[str]:
    """The paper lines for the comparison's headline run (printed by ``moe-sim``)."""
    return paper_lines(spec, table, _headline_label(spec, table))
