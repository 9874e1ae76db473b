"""The bundled policy comparison (plain ``moe-sim``, or ``moe-sim experiment=compare``): the same
trace, hardware and model under several policies (and cache settings), one table of headline
metrics.

Each run is a mapping ``{label, policy, cache?}``: ``policy`` names a config of ``conf/policy``
and ``cache`` overrides keys of the top-level ``cache`` group (e.g. ``{fraction: 1.0, preload:
true}`` for the all-resident bound). ``speedup`` is tokens/s over the baseline run's.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from moe_offload_lab.sim.run import RunConfig, SimResult, simulate
from moe_offload_lab.traces.atomic import atomic_path, write_text
from moe_offload_lab.traces.errors import ConfigError
from tqdm import tqdm

RUNS_DIR = "runs"
COLUMNS = ("policy", "tpot_ms_mean", "tpot_ms_p99", "tokens_per_s", "hit_rate", "stall_s",
           "speedup")


def _runs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    runs = spec.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ConfigError("compare.runs must be a non-empty list of {label, policy, cache}")
    out = []
    for i, run in enumerate(runs):
        if isinstance(run, str):
            run = {"label": run, "policy": run}
        if not isinstance(run, dict) or not run.get("policy"):
            raise ConfigError(f"compare.runs[{i}] needs a policy, got {run!r}")
        unknown = sorted(set(run) - {"label", "policy", "cache"})
        if unknown:
            raise ConfigError(f"compare.runs[{i}]: unknown key(s) {', '.join(unknown)}")
        out.append({"label": str(run.get("label") or run["policy"]), "policy": run["policy"],
                    "cache": dict(run.get("cache") or {})})
    labels = [r["label"] for r in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"compare.runs: duplicate labels in {labels}")
    return out


def run_configs(cfg: RunConfig) -> dict[str, RunConfig]:
    """The config of each run of ``cfg.compare``, by label."""
    runs = _runs(cfg.compare or {})
    return {run["label"]: replace(cfg, policy=run["policy"], compare=None,
                                  cache={**(cfg.cache or {}), **run["cache"]})
            for run in runs}


def run_comparison(cfg: RunConfig
                   ) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, SimResult]]:
    """Run every entry of ``cfg.compare['runs']``; returns the table, each run's summary (with
    its ``label``) and each run's result (by label)."""
    configs = run_configs(cfg)
    baseline = (cfg.compare or {}).get("baseline") or next(iter(configs))
    if baseline not in configs:
        raise ConfigError(f"compare.baseline {baseline!r} is not one of the runs' labels")
    summaries, results = [], {}
    for label, one in tqdm(configs.items(), desc="compare", unit="run", leave=False,
                           disable=None):
        result = simulate(one)
        summaries.append({"label": label, **result.summary})
        results[label] = result
    base = next(s for s in summaries if s["label"] == baseline)["tokens_per_s"]
    rows = [{"policy": s["label"], "tpot_ms_mean": s["tpot_ms_mean"],
             "tpot_ms_p99": s["tpot_ms_p99"], "tokens_per_s": s["tokens_per_s"],
             "hit_rate": s["hit_rate"], "stall_s": s["stall_s"],
             "speedup": (s["tokens_per_s"] / base) if base and s["tokens_per_s"] else None}
            for s in summaries]
    return pd.DataFrame(rows, columns=list(COLUMNS)), summaries, results


def run_folder(label: str) -> str:
    """The folder name of a run's files under ``runs/`` (its label, made file-safe)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return safe.strip(".") or "run"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(table: pd.DataFrame) -> str:
    """The table as GitHub markdown."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" if c == "policy" else "---:" for c in table.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def text_table(table: pd.DataFrame) -> str:
    """The table for a terminal: aligned columns."""
    cells = [list(table.columns)] + [[_fmt(v) for v in row]
                                     for row in table.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table.columns))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in cells)


def write_comparison(table: pd.DataFrame, summaries: list[dict[str, Any]],
                     results: dict[str, SimResult], out: str | Path) -> list[Path]:
    """Write ``compare.csv``, ``compare.md``, ``compare.png`` and ``summaries.json`` into
    ``out``, and each run's ``summary.json``, ``steps.parquet`` and ``events.parquet`` into
    ``out/runs/<label>/`` (what ``moe-report`` reads for distributions and timelines); every
    file atomically."""
    from moe_offload_lab.sim.plot import plot_comparison

    out = Path(out)
    for label, result in results.items():
        result.write(out / RUNS_DIR / run_folder(label), figure=False, timeline=False)
    steps = {label: result.steps for label, result in results.items()}
    with atomic_path(out / "compare.csv") as tmp:
        table.to_csv(tmp, index=False)
    first = summaries[0]
    title = (f"{first['model']} on {first['hardware']}, {first['tokens']} tokens, "
             f"batch {first['batch']}")
    return [out / "compare.csv", write_text(out / "compare.md", markdown(table)),
            plot_comparison(steps, summaries, out / "compare.png", title),
            write_text(out / "summaries.json", json.dumps(summaries, indent=2, default=str))]
