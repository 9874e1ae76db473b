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

``compare.grid`` (optional) repeats every run at several settings, as a paper's figure does::

    grid:
      model: [mixtral-8x7b, {name: gpt-oss-20b, expert_bytes_per_param: 0.53125}]  # conf/model
      batch: [1, 16]

Each run then runs once per combination (models x batches); the table gains ``model`` and
``batch`` columns, and ``speedup`` is over the baseline run at the same model and batch. A grid
``model`` replaces the composed model whole (its conf/model file, plus the keys the entry gives),
so ``model.X=...`` on the command line does not reach it: put the key in the grid entry.

``compare.headline`` (optional) prints a paper's headline claims beside the simulator's::

    headline:
      paper: Prophet
      source: "where the figures are from"
      claims:   # factor = metric(run) / metric(over), inverted for latencies (_ms / _s)
        - {what: "TPOT speedup over on-demand", metric: tpot_ms_mean, run: prophet,
           over: on-demand, paper: [1.5, 10.4]}         # a range, or one number

one line per claim with the simulator's factor at every grid point (:func:`headline_lines`),
printed by ``moe-sim`` and appended to ``compare.md``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from moe_offload_lab.sim.run import RunConfig, SimResult, simulate
from moe_offload_lab.sim.trace_cache import TraceCache
from moe_offload_lab.traces.atomic import atomic_path, write_text
from moe_offload_lab.traces.catalog import load_yaml
from moe_offload_lab.traces.errors import ConfigError, check_keys
from tqdm import tqdm

RUNS_DIR = "runs"
COLUMNS = ("label", "policy", "tpot_ms_mean", "tpot_ms_p99", "tokens_per_s", "hit_rate",
           "stall_s", "speedup")
PUBLISHED_COLUMNS = ("published_tokens_per_s", "published_speedup", "speedup_error")
GRID_KEYS = ("model", "batch")
_TEXT_COLUMNS = ("label", "model", "policy")
CLAIM_KEYS = ("what", "metric", "run", "over", "paper")


def parse_runs(spec: Mapping[str, Any], key: str, extra: tuple[str, ...] = ()
               ) -> list[dict[str, Any]]:
    """The runs of a ``compare`` mapping, checked: a non-empty list of names or of
    ``{label, <key>, <extra>...}`` mappings (``key``: ``policy`` here, ``balance`` for
    expert-parallel comparisons); a label defaults to the run's ``key`` when that is a name;
    labels are unique."""
    allowed = ("label", key, *extra)
    runs = spec.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"compare.runs must be a non-empty list of {{{', '.join(allowed)}}}")
    out = []
    for i, run in enumerate(runs):
        if isinstance(run, str):
            run = {"label": run, key: run}
        if not isinstance(run, Mapping) or not run.get(key):
            raise ConfigError(f"compare.runs[{i}] needs a {key}, got {run!r}")
        unknown = sorted(set(run) - set(allowed))
        if unknown:
            raise ConfigError(f"compare.runs[{i}]: unknown key(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(allowed)}")
        value = run[key]
        label = run.get("label") or (value if isinstance(value, str) else f"run{i}")
        out.append({**{k: run[k] for k in extra if k in run}, "label": str(label), key: value})
    labels = [r["label"] for r in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"compare.runs: duplicate labels in {labels}")
    return out


def _runs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**run, "cache": dict(run.get("cache") or {})}
            for run in parse_runs(spec, "policy", ("cache",))]


@dataclass(frozen=True)
class Job:
    """One simulation of a comparison: run ``label`` at grid ``point`` (``{}`` without a grid;
    else ``{"model": name, "batch": n}``, the keys the grid has)."""

    label: str
    point: dict[str, Any]
    cfg: RunConfig

    @property
    def key(self) -> str:
        """Unique among the comparison's jobs: the label, plus the grid point if any."""
        return " ".join([self.label, *(f"{k}={v}" for k, v in self.point.items())])


def _grid_model(value: Any) -> dict[str, Any]:
    """A grid ``model`` entry: a conf/model name, or ``{name, <model keys>}``."""
    if isinstance(value, str):
        return load_yaml("model", value)
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return {**load_yaml("model", value["name"]), **value}
    raise ConfigError(f"compare.grid.model entries must be conf/model names or {{name, ...}} "
                      f"mappings, got {value!r}")


def grid_points(cfg: RunConfig) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The grid's combinations as ``(point, changes)``: ``point`` for the table (model name,
    batch), ``changes`` for :func:`dataclasses.replace` on the run config."""
    grid = (cfg.compare or {}).get("grid") or {}
    check_keys(grid, GRID_KEYS, "compare.grid")  # each key maps to a list
    axes = []
    for key in GRID_KEYS:
        if key not in grid:
            continue
        values = grid[key]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"compare.grid.{key} must be a non-empty list, got {values!r}")
        if key == "batch":
            bad = [b for b in values if isinstance(b, bool) or not isinstance(b, int) or b < 1]
            if bad:
                raise ConfigError(f"compare.grid.batch must list positive integers, got {bad}")
            axes.append([({"batch": b}, {"batch": b}) for b in values])
        else:
            models = [_grid_model(v) for v in values]
            axes.append([({"model": m["name"]}, {"model": m}) for m in models])
    points = []
    for combo in itertools.product(*axes):
        point: dict[str, Any] = {}
        changes: dict[str, Any] = {}
        for p, c in combo:
            point.update(p)
            changes.update(c)
        points.append((point, changes))
    return points


def jobs(cfg: RunConfig) -> list[Job]:
    """Every simulation of ``cfg.compare``: each run at each grid point, grid point outermost."""
    runs = _runs(cfg.compare or {})
    out = []
    for point, changes in grid_points(cfg):
        base = replace(cfg, compare=None, **changes)
        out.extend(Job(run["label"], point,
                       replace(base, policy=run["policy"],
                               cache={**(cfg.cache or {}), **run["cache"]}))
                   for run in runs)
    return out


def run_configs(cfg: RunConfig) -> dict[str, RunConfig]:
    """The config of each run of ``cfg.compare``, by :attr:`Job.key` (the label without a
    grid)."""
    return {job.key: job.cfg for job in jobs(cfg)}


def run_comparison(cfg: RunConfig, traces: TraceCache | None = None
                   ) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, SimResult]]:
    """Run every job of ``cfg.compare``, each synthetic trace generated once (``traces``, else
    a cache of this comparison's own: :mod:`sim.trace_cache`); returns the table, each job's
    summary (with its ``label``, and its ``key`` when there is a grid) and each job's result
    (by key)."""
    traces = traces if traces is not None else TraceCache()
    todo = jobs(cfg)
    labels = [r["label"] for r in _runs(cfg.compare or {})]
    baseline = (cfg.compare or {}).get("baseline") or labels[0]
    if baseline not in labels:
        raise ConfigError(f"compare.baseline {baseline!r} is not one of the runs' labels")
    summaries, results = [], {}
    for job in tqdm(todo, desc="compare", unit="run", leave=False, disable=None):
        result = simulate(job.cfg, traces)
        summaries.append({"label": job.label, **({"key": job.key} if job.point else {}),
                          **result.summary})
        results[job.key] = result
    grid_columns = list(todo[0].point)
    parts = []
    for start in range(0, len(todo), len(labels)):  # one grid point at a time
        chunk = summaries[start:start + len(labels)]
        part = _rows(chunk, baseline, grid_columns)
        published = published_figures(replace(todo[start].cfg, compare=cfg.compare))
        if published is not None:
            part = _with_published(part, published, baseline)
        parts.append(part)
    table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return table, summaries, results


def _rows(summaries: list[dict[str, Any]], baseline: str,
          grid_columns: list[str]) -> pd.DataFrame:
    base = next(s for s in summaries if s["label"] == baseline)["tokens_per_s"]
    rows = [{"label": s["label"], **{k: s[k] for k in grid_columns}, "policy": s["policy"],
             "tpot_ms_mean": s["tpot_ms_mean"], "tpot_ms_p99": s["tpot_ms_p99"],
             "tokens_per_s": s["tokens_per_s"], "hit_rate": s["hit_rate"],
             "stall_s": s["stall_s"],
             "speedup": (s["tokens_per_s"] / base) if base and s["tokens_per_s"] else None}
            for s in summaries]
    return pd.DataFrame(rows, columns=["label", *grid_columns, *COLUMNS[1:]])


def _claims(cfg: RunConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spec = (cfg.compare or {}).get("headline") or {}
    if not isinstance(spec, dict) or set(spec) - {"paper", "source", "claims"}:
        raise ConfigError("compare.headline must be a mapping {paper, source, claims}")
    claims = spec.get("claims") or []
    for i, claim in enumerate(claims):
        if not isinstance(claim, dict) or set(claim) != set(CLAIM_KEYS):
            raise ConfigError(f"compare.headline.claims[{i}] needs exactly the keys "
                              f"{', '.join(CLAIM_KEYS)}")
    return spec, claims


def _factor(table: pd.DataFrame, metric: str, run: str, over: str) -> float | None:
    """``metric`` of ``run`` over that of ``over`` (one grid point's rows), inverted for
    latencies so that above 1 is better."""
    rows = table.set_index("label")
    if metric not in rows.columns or run not in rows.index or over not in rows.index:
        return None
    mine, theirs = rows.loc[run, metric], rows.loc[over, metric]
    if not mine or not theirs or mine != mine or theirs != theirs:
        return None
    latency = "_ms" in metric or (metric.endswith("_s") and not metric.endswith("per_s"))
    return float(theirs / mine) if latency else float(mine / theirs)


def _point_label(names: list[str], values: tuple[Any, ...]) -> str:
    """``mixtral-8x7b batch 16``: a grid point for people."""
    return " ".join(f"batch {v}" if name == "batch" else str(v)
                    for name, v in zip(names, values, strict=True))


def headline_lines(cfg: RunConfig, table: pd.DataFrame) -> list[str]:
    """The paper's headline claims beside the simulator's factors (see the module docstring);
    empty without ``compare.headline``."""
    spec, claims = _claims(cfg)
    if not claims:
        return []
    grid = [c for c in GRID_KEYS if c in table.columns]
    groups = list(table.groupby(grid, sort=False)) if grid else [((), table)]
    lines = [f"{spec.get('paper', 'paper')}'s headline beside the simulator's:"]
    for claim in claims:
        paper = claim["paper"]
        published = (f"{float(paper[0]):.2f}x-{float(paper[1]):.2f}x" if isinstance(paper, list)
                     else f"{float(paper):.2f}x")
        sim = []
        for key, part in groups:
            value = _factor(part, claim["metric"], claim["run"], claim["over"])
            where = _point_label(grid, key if isinstance(key, tuple) else (key,))
            sim.append(f"{where + ' ' if where else ''}"
                       f"{'-' if value is None else f'{value:.2f}x'}")
        lines.append(f"  {claim['what']} ({claim['run']} over {claim['over']}): paper "
                     f"{published}; simulator {', '.join(sim)}")
    if spec.get("source"):
        lines.append(f"  source: {spec['source']}")
    return lines


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
    rule = "|" + "|".join("---" if c in _TEXT_COLUMNS else "---:"
                          for c in table.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def text_table(table: pd.DataFrame) -> str:
    """The table for a terminal: aligned columns."""
    cells = [list(table.columns)] + [[_fmt(v) for v in row]
                                     for row in table.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table.columns))]
    left = [name in _TEXT_COLUMNS for name in table.columns]
    return "\n".join("  ".join(c.ljust(w) if is_text else c.rjust(w)
                               for c, w, is_text in zip(r, widths, left, strict=True))
                     for r in cells)


def write_comparison(table: pd.DataFrame, summaries: list[dict[str, Any]],
                     results: dict[str, SimResult], out: str | Path,
                     headline: list[str] | None = None, figure: bool = True) -> list[Path]:
    """Write ``compare.csv``, ``compare.md``, ``compare.png`` (unless ``figure`` is off) and
    ``summaries.json`` into ``out``, and each run's ``summary.json``, ``steps.parquet`` and
    ``events.parquet`` into ``out/runs/<label>/`` (what ``moe-report`` reads for distributions
    and timelines); every file atomically."""
    out = Path(out)
    for key, result in results.items():
        result.write(out / RUNS_DIR / run_folder(key), figure=False, timeline=False)
    steps = {label: result.steps for label, result in results.items()}
    with atomic_path(out / "compare.csv") as tmp:
        table.to_csv(tmp, index=False)
    first = summaries[0]
    title = (f"{first['model']} on {first['hardware']}, {first['tokens']} tokens, "
             f"batch {first['batch']}")
    text = markdown(table) + "".join(f"\n{line}" for line in headline or [])
    paths = [out / "compare.csv", write_text(out / "compare.md", text)]
    if figure and "key" in first:  # a grid: one figure of the speedups, by run and grid point
        paths.append(plot_grid(table, out / "compare.png", f"on {first['hardware']}"))
    elif figure:
        from moe_offload_lab.sim.plot import plot_comparison

        paths.append(plot_comparison(steps, summaries, out / "compare.png", title))
    return [*paths, write_text(out / "summaries.json",
                               json.dumps(summaries, indent=2, default=str))]


def plot_grid(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Speedup over the baseline per run (bars), one colour per grid point (model, batch)."""
    import seaborn as sns
    from matplotlib.figure import Figure
    from moe_offload_lab.sim.plot import _save

    grid = [c for c in GRID_KEYS if c in table.columns]
    data = table.assign(point=[_point_label(grid, tuple(row))
                               for row in table[grid].itertuples(index=False)])
    sns.set_theme(style="whitegrid", context="paper")
    fig = Figure(figsize=(11, 4.5))
    ax = fig.subplots()
    sns.barplot(data=data, x="label", y="speedup", hue="point", ax=ax)
    baseline = table.loc[table["speedup"] == 1.0, "label"]
    over = baseline.iloc[0] if len(baseline) else "the baseline"
    ax.set(xlabel="", ylabel=f"tokens/s over {over}", title=f"speedup {title}")
    ax.legend(title="")
    ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, path)
