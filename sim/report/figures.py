"""Figures of simulator runs (sweeps, comparisons, single runs), each with the table behind it.

Every ``*_section`` function takes a :class:`~sim.report.sources.Source` and returns a
:class:`~sim.report.style.Section`, or a string saying why the figure does not apply.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from moe_offload_lab.sim.report.sources import Source
from moe_offload_lab.sim.report.style import (
    PART_LABELS,
    Section,
    figure_height,
    new_figure,
    wide_range,
)

BASELINES = (("on-demand", "over on-demand"), ("lru", "over LRU"))


def _has(frame: pd.DataFrame, *columns: str) -> bool:
    return all(c in frame and frame[c].notna().any() for c in columns)


def _baseline(runs: pd.DataFrame, name: str, group: str) -> pd.Series | None:
    """The run of policy ``name`` to compare runs of ``group`` with: the group's own, else (for
    on-demand, which caches nothing) the only one of the sweep."""
    def pick(frame: pd.DataFrame) -> pd.Series | None:
        frame = frame[(frame["series"] == name) | (frame["label"] == name)]
        exact = frame[frame["label"] == name]
        return (exact if len(exact) else frame).iloc[0] if len(frame) else None

    found = pick(runs[runs["group"] == group])
    if found is None and name == "on-demand":
        every = runs[runs["series"] == name]
        found = every.iloc[0] if len(every) == 1 else None
    return found


def speedup_section(source: Source) -> Section | str:
    """Tokens/s of each run over the on-demand and the LRU run of its group."""
    runs = source.runs
    if not _has(runs, "tokens_per_s"):
        return "no tokens/s values"
    if len(runs) < 2:
        return "a single run has nothing to be compared with"
    rows = []
    for run in runs.itertuples(index=False):
        row = {"run": run.label, "tokens_per_s": run.tokens_per_s}
        for name, column in BASELINES:
            base = _baseline(runs, name, run.group)
            ok = base is not None and base["tokens_per_s"] and run.tokens_per_s
            row[column] = run.tokens_per_s / base["tokens_per_s"] if ok else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    present = [c for _, c in BASELINES if table[c].notna().any()]
    if not present:
        return "no on-demand or LRU run to compare against"
    table = table[["run", "tokens_per_s", *present]]
    long = table.melt(id_vars="run", value_vars=present, var_name="baseline",
                      value_name="speedup").dropna()
    fig = new_figure(9, figure_height(len(table) * max(1, len(present) * 0.6)))
    ax = fig.subplots()
    sns.barplot(data=long, y="run", x="speedup", hue="baseline", ax=ax, orient="h")
    if wide_range(long["speedup"]):
        ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=1, ls="--")
    ax.set(xlabel="speedup in decode throughput (x, tokens/s over the baseline's)", ylabel="",
           title="Speedup over on-demand loading and over an LRU cache")
    ax.legend(title="baseline", loc="lower right")
    text = ("Throughput (tokens per simulated second) of each run divided by that of the "
            "on-demand run (no cache) and of the LRU run with the same other settings; the "
            "dashed line marks parity.")
    return Section("speedup", "Speedup over on-demand and LRU", text, table, fig)


def hit_ratio_section(source: Source) -> Section | str:
    """Hit ratio against cache size, one line per policy, when the cache size varies."""
    runs = source.runs
    if not _has(runs, "hit_rate", "cache_fraction"):
        return "no hit rate or cache size values"
    data = runs.dropna(subset=["hit_rate", "cache_fraction"])
    if not (data.groupby("series")["cache_fraction"].nunique() > 1).any():
        return "the cache size does not vary within a policy"
    other = data["group"].str.split(", ").map(
        lambda parts: ", ".join(p for p in parts if p and not p.startswith("cache.")))
    data = data.assign(cache_pct=data["cache_fraction"] * 100, hit_pct=data["hit_rate"] * 100,
                       setting=other)
    fig = new_figure(8, 4.5)
    ax = fig.subplots()
    style = "setting" if data["setting"].nunique() > 1 else None
    sns.lineplot(data=data.sort_values("cache_pct"), x="cache_pct", y="hit_pct", hue="series",
                 style=style, marker="o", errorbar=None, ax=ax)
    ax.set(xlabel="expert cache size (% of all routed experts)", ylabel="hit ratio (%)",
           title="Hit ratio against cache size", ylim=(-2, 102))
    ax.legend(title="policy", fontsize=8)
    table = data.pivot_table(index=["series", "setting"] if style else "series",
                             columns="cache_pct", values="hit_pct", aggfunc="mean")
    table.columns = [f"hit % at {c:g}% cache" for c in table.columns]
    table = table.reset_index().rename(columns={"series": "policy"})
    text = ("Share of expert accesses (%) found resident in the GPU cache when their layer "
            "started, against the cache size as a percentage of all routed experts.")
    return Section("hit_ratio", "Hit ratio against cache size", text, table, fig)


def _steps(run_dir: str | None) -> pd.DataFrame | None:
    path = Path(run_dir) / "steps.parquet" if run_dir else None
    if path is None or not path.is_file():
        return None
    return pd.read_parquet(path, columns=["latency_s"])


def latency_section(source: Source) -> Section | str:
    """Step-latency distributions from ``steps.parquet`` (else summary percentiles)."""
    frames = []
    for run in source.runs.itertuples(index=False):
        steps = _steps(run.dir)
        if steps is not None and len(steps):
            frames.append(pd.DataFrame({"run": run.label, "latency_ms": steps["latency_s"] * 1e3}))
    if frames:
        data = pd.concat(frames, ignore_index=True)
        fig = new_figure(9, figure_height(len(frames), 0.45))
        ax = fig.subplots()
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib's deprecated `vert`
            warnings.simplefilter("ignore", DeprecationWarning)
            sns.boxplot(data=data, y="run", x="latency_ms", hue="run", orient="h", ax=ax,
                        log_scale=wide_range(data["latency_ms"]), fliersize=2, legend=False)
        ax.set(xlabel="step latency (ms)", ylabel="",
               title="Distribution of step latency per run")
        grouped = data.groupby("run", sort=False)["latency_ms"]
        table = pd.DataFrame({"steps": grouped.size(), "mean ms": grouped.mean(),
                              "p50 ms": grouped.median(), "p90 ms": grouped.quantile(0.9),
                              "p99 ms": grouped.quantile(0.99), "max ms": grouped.max()})
        text = ("Latency of every simulated step of each run (from its steps.parquet; prompt "
                "steps included, so the long right whiskers are usually prefills). Boxes span "
                "the quartiles, the line is the median.")
        return Section("step_latency", "Step-latency distribution", text,
                       table.reset_index(), fig)
    stats = [c for c in ("tpot_ms_mean", "tpot_ms_p50", "tpot_ms_p99") if _has(source.runs, c)]
    if not stats:
        return "no steps.parquet and no latency percentiles"
    table = source.runs[["label", *stats]].rename(columns={"label": "run"})
    long = table.melt(id_vars="run", var_name="statistic", value_name="ms").dropna()
    long["statistic"] = long["statistic"].str.replace("tpot_ms_", "", regex=False)
    fig = new_figure(9, figure_height(len(table), 0.45))
    ax = fig.subplots()
    sns.pointplot(data=long, y="run", x="ms", hue="statistic", orient="h", linestyle="none",
                  markers=["o", "s", "D"][:len(stats)], ax=ax)
    if wide_range(long["ms"]):
        ax.set_xscale("log")
    ax.set(xlabel="time per output token (ms)", ylabel="",
           title="Decode latency per run (summary percentiles)")
    ax.legend(title="statistic")
    text = ("Mean, median and 99th percentile of the time per output token of each run; the "
            "folder keeps no per-step files, so whole distributions cannot be drawn.")
    return Section("step_latency", "Decode latency per run", text, table, fig)


def breakdown_section(source: Source) -> Section | str:
    """Where a step's time went, per run: stacked mean milliseconds per part."""
    parts = [p for p in PART_LABELS if _has(source.runs, f"{p}_ms_per_step")]
    if not parts:
        return "no time breakdown in the summaries"
    table = source.runs[["label", *[f"{p}_ms_per_step" for p in parts]]].copy()
    table.columns = ["run", *[PART_LABELS[p] for p in parts]]
    table = table.fillna(0.0)
    if _has(source.runs, "step_latency_ms_mean"):
        table["mean step latency (ms)"] = source.runs["step_latency_ms_mean"].to_numpy()
    fig = new_figure(10, figure_height(len(table), 0.4))
    ax = fig.subplots()
    left = np.zeros(len(table))
    colors = sns.color_palette("colorblind", len(parts))
    for part, color in zip(parts, colors, strict=True):
        values = table[PART_LABELS[part]].to_numpy(dtype=float)
        ax.barh(table["run"], values, left=left, color=color, label=PART_LABELS[part])
        left += values
    ax.invert_yaxis()
    ax.set(xlabel="mean time per step (ms)", ylabel="",
           title="Where a step's time went, per run")
    ax.legend(fontsize=8, loc="lower right")
    text = ("Mean milliseconds per step spent in non-expert compute, GPU and CPU expert compute, "
            "stalls waiting for expert copies, and policy decisions. CPU experts and policy work "
            "can overlap the GPU stream, so the bar can exceed the step latency.")
    return Section("breakdown", "Time breakdown per run", text, table, fig)


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of the points no other point beats in both ``x`` and ``y`` (both minimized)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)  # [N], [N]
    front = np.ones(x.size, dtype=bool)
    for i in range(x.size):
        better = (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        front[i] = not better.any()
    return front


def draw_pareto(data: pd.DataFrame, hue: str | None, title: str, ylabel: str):
    """Scatter of ``cache_gb`` against ``latency_ms`` with the ``front`` points joined."""
    fig = new_figure(8, 5)
    ax = fig.subplots()
    sns.scatterplot(data=data, x="cache_gb", y="latency_ms", hue=hue, ax=ax, s=40, alpha=0.7)
    front = data[data["front"]].sort_values("cache_gb")
    ax.step(front["cache_gb"], front["latency_ms"], where="post", color="black", lw=1.2,
            label="Pareto front")
    ax.scatter(front["cache_gb"], front["latency_ms"], facecolors="none", edgecolors="black",
               s=110, lw=1.2)
    if wide_range(data["latency_ms"]):
        ax.set_yscale("log")
    ax.set(xlabel="GPU memory for the expert cache (GB)", ylabel=ylabel, title=title)
    ax.legend(fontsize=8, title=hue)
    return fig


def pareto_section(source: Source) -> Section | str:
    """Mean time per output token against expert-cache bytes over the runs."""
    runs = source.runs
    if not _has(runs, "cache_bytes", "tpot_ms_mean"):
        return "no cache bytes or mean TPOT values"
    data = runs.dropna(subset=["cache_bytes", "tpot_ms_mean"])
    if data["cache_bytes"].nunique() < 2:
        return "the cache size does not vary"
    data = pd.DataFrame({"label": data["label"], "policy": data["series"],
                         "cache_gb": data["cache_bytes"] / 1e9,
                         "latency_ms": data["tpot_ms_mean"]})
    data["front"] = pareto_front(data["cache_gb"], data["latency_ms"])
    fig = draw_pareto(data, "policy", "Latency against cache memory",
                      "mean time per output token (ms)")
    table = data.sort_values(["front", "cache_gb"], ascending=[False, True])[
        ["label", "cache_gb", "latency_ms", "front"]]
    table.columns = ["run", "cache GB", "mean TPOT ms", "on the front"]
    text = ("Each run's mean time per output token against the GPU memory its expert cache "
            "takes; circled runs form the Pareto front (no run is both faster and smaller).")
    return Section("pareto", "Latency against cache memory (Pareto front)", text, table, fig)
