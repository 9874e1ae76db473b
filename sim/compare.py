"""The bundled policy comparison (plain ``moe-sim``, or ``moe-sim experiment=compare``): the same
trace, hardware and model under several policies (and cache settings), one table of headline
metrics.

Each run is a mapping ``{label, policy, cache?}``: ``policy`` names a config of ``conf/policy``
and ``cache`` overrides keys of the top-level ``cache`` group (e.g. ``{fraction: 1.0, preload:
true}`` for the all-resident bound). ``speedup`` is tokens/s over the baseline run's.

``compare.published`` (optional) puts published figures beside the simulated ones::

    published:
      source: "who measured them, where"
      figures:                      # the first entry whose ``match`` holds is used
        - match: {hardware.name: a100-80gb-sxm, model.expert_bytes_per_param: 0.325,
                  cache.slots_per_layer: 4}    # dotted keys of the composed config
          tokens_per_s: {full: 3.061, no-prefetch: 2.918, no-cache: 2.265}   # by run label

and the table gains ``published_tokens_per_s``, ``published_speedup`` (over the published
baseline) and ``speedup_error`` (simulated speedup over published speedup, minus 1): the ratios
are what a simulator can be held to when the absolute figures depend on a runtime it models only
through a fitted profile.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from moe_offload_lab.sim.run import RunConfig, SimResult, simulate
from moe_offload_lab.sim.trace_cache import TraceCache
from moe_offload_lab.traces.atomic import atomic_path, write_text
from moe_offload_lab.traces.errors import ConfigError
from tqdm import tqdm

RUNS_DIR = "runs"
COLUMNS = ("label", "policy", "tpot_ms_mean", "tpot_ms_p99", "tokens_per_s", "hit_rate",
           "stall_s", "speedup")
PUBLISHED_COLUMNS = ("published_tokens_per_s", "published_speedup", "speedup_error")


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


def run_comparison(cfg: RunConfig, traces: TraceCache | None = None
                   ) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, SimResult]]:
    """Run every entry of ``cfg.compare['runs']`` on one trace (generated once: ``traces``,
    else a cache of this comparison's own); returns the table, each run's summary (with its
    ``label``) and each run's result (by label)."""
    traces = traces if traces is not None else TraceCache()
    configs = run_configs(cfg)
    baseline = (cfg.compare or {}).get("baseline") or next(iter(configs))
    if baseline not in configs:
        raise ConfigError(f"compare.baseline {baseline!r} is not one of the runs' labels")
    summaries, results = [], {}
    for label, one in tqdm(configs.items(), desc="compare", unit="run", leave=False,
                           disable=None):
        result = simulate(one, traces)
        summaries.append({"label": label, **result.summary})
        results[label] = result
    base = next(s for s in summaries if s["label"] == baseline)["tokens_per_s"]
    rows = [{"label": s["label"], "policy": s["policy"], "tpot_ms_mean": s["tpot_ms_mean"],
             "tpot_ms_p99": s["tpot_ms_p99"], "tokens_per_s": s["tokens_per_s"],
             "hit_rate": s["hit_rate"], "stall_s": s["stall_s"],
             "speedup": (s["tokens_per_s"] / base) if base and s["tokens_per_s"] else None}
            for s in summaries]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    published = published_figures(cfg)
    if published is not None:
        table = _with_published(table, published, baseline)
    return table, summaries, results


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    """``data['a']['b']`` for ``'a.b'`` (None when a part is missing)."""
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, (int, float)) and not isinstance(expected, bool) \
            and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return abs(float(expected) - float(actual)) <= 1e-9 * max(1.0, abs(float(expected)))
    return expected == actual


def published_figures(cfg: RunConfig) -> dict[str, float] | None:
    """The published tokens/s per run label for this configuration (see the module docstring),
    or None when ``compare.published`` is absent or none of its entries matches."""
    spec = (cfg.compare or {}).get("published")
    if not spec:
        return None
    figures = spec.get("figures") if isinstance(spec, dict) else None
    if not isinstance(figures, list):
        raise ConfigError("compare.published.figures must be a list of {match, tokens_per_s}")
    data = {"model": cfg.model, "hardware": cfg.hardware, "cache": cfg.cache or {},
            "batch": cfg.batch, "system": cfg.system}
    for i, entry in enumerate(figures):
        if not isinstance(entry, dict) or not isinstance(entry.get("match"), dict) \
                or not isinstance(entry.get("tokens_per_s"), dict):
            raise ConfigError(f"compare.published.figures[{i}] needs match and tokens_per_s "
                              f"mappings")
        if all(_matches(v, _lookup(data, k)) for k, v in entry["match"].items()):
            return {str(k): float(v) for k, v in entry["tokens_per_s"].items()}
    return None


def _with_published(table: pd.DataFrame, published: dict[str, float],
                    baseline: str) -> pd.DataFrame:
    base = published.get(baseline)
    figure = table["label"].map(published)
    speedup = figure / base if base else figure * float("nan")
    return table.assign(published_tokens_per_s=figure, published_speedup=speedup,
                        speedup_error=table["speedup"] / speedup - 1.0)


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
    rule = "|" + "|".join("---" if c in ("label", "policy") else "---:"
                          for c in table.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def text_table(table: pd.DataFrame) -> str:
    """The table for a terminal: aligned columns."""
    cells = [list(table.columns)] + [[_fmt(v) for v in row]
                                     for row in table.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table.columns))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in cells)


def write_comparison(table: pd.DataFrame, summaries: list[dict[str, Any]],
                     results: dict[str, SimResult], out: str | Path,
                     figure: bool = True) -> list[Path]:
    """Write ``compare.csv``, ``compare.md``, ``compare.png`` (unless ``figure`` is off) and
    ``summaries.json`` into ``out``, and each run's ``summary.json``, ``steps.parquet`` and
    ``events.parquet`` into ``out/runs/<label>/`` (what ``moe-report`` reads for distributions
    and timelines); every file atomically."""
    out = Path(out)
    for label, result in results.items():
        result.write(out / RUNS_DIR / run_folder(label), figure=False, timeline=False)
    steps = {label: result.steps for label, result in results.items()}
    with atomic_path(out / "compare.csv") as tmp:
        table.to_csv(tmp, index=False)
    first = summaries[0]
    title = (f"{first['model']} on {first['hardware']}, {first['tokens']} tokens, "
             f"batch {first['batch']}")
    paths = [out / "compare.csv", write_text(out / "compare.md", markdown(table))]
    if figure:
        from moe_offload_lab.sim.plot import plot_comparison

        paths.append(plot_comparison(steps, summaries, out / "compare.png", title))
    return [*paths, write_text(out / "summaries.json",
                               json.dumps(summaries, indent=2, default=str))]
