"""A one-page figure of :func:`traces.analysis.report.compute_stats` output.

Six panels: routing entropy (with the conditional entropies and exploitable bits), cross-layer
and adjacent-token mutual information, LRU and Belady hit ratio against cache size, lookahead
accuracy, traffic concentration and adjacent-token reuse. Drawn with matplotlib's Agg canvas
(no display, no pyplot global state) in seaborn's ``whitegrid`` style.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from moe_offload_lab.traces.atomic import atomic_path
from moe_offload_lab.traces.errors import ConfigError

_SCHEMA = "moe-trace-stats/1"


def _values(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _fmt(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.3g}{unit}"


def _panel_entropy(ax: Any, stats: dict[str, Any], palette: list) -> None:
    ent = stats["entropy_bits"]
    layers = np.arange(len(ent["per_layer"]))
    ax.plot(layers, _values(ent["per_layer"]), marker="o", ms=3, color=palette[0],
            label=f"H(X_l), mean {_fmt(ent['mean'])}")
    for i, (c, block) in enumerate(sorted(stats["conditional_entropy_bits"].items(),
                                          key=lambda item: int(item[0]))):
        ax.plot(layers, _values(block["per_layer"]), marker=".", color=palette[1 + i % 9],
                label=f"H(X_l | {c} prev.), exploitable {_fmt(block['exploitable_bits'])}")
    if ent["max"] is not None:
        ax.axhline(ent["max"], color="grey", ls="--", lw=1, label=f"log2 E = {ent['max']:.3g}")
    ax.set(title="Routing entropy per layer", xlabel="MoE layer", ylabel="entropy (bits)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="lower right")


def _panel_information(ax: Any, stats: dict[str, Any], palette: list) -> None:
    mi = stats["mutual_information_bits"]
    for i, (d, block) in enumerate(sorted(mi["cross_layer"].items(), key=lambda it: int(it[0]))):
        values = _values(block["per_layer"])
        ax.plot(np.arange(values.size), values, marker="o", ms=3, color=palette[i % 10],
                label=f"I(X_l; X_l+{d}), mean {_fmt(block['mean'])}")
    for i, (d, block) in enumerate(sorted(mi.get("cross_layer_top1", {}).items(),
                                          key=lambda it: int(it[0]))):
        values = _values(block["per_layer"])
        ax.plot(np.arange(values.size), values, ls=":", color=palette[i % 10],
                label=f"top-1 I(T_l; T_l+{d}), mean {_fmt(block['mean'])}")
    adj = _values(mi["adjacent_token"]["per_layer"])
    ax.plot(np.arange(adj.size), adj, ls="--", color="black",
            label=f"adjacent tokens, mean {_fmt(mi['adjacent_token']['mean'])}")
    ax.set(title="Mutual information", xlabel="MoE layer (source layer l)",
           ylabel="mutual information (bits)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)


def _panel_cache(ax: Any, stats: dict[str, Any], palette: list) -> None:
    curve = stats["lru_hit_ratio_curve"]
    keys = np.asarray(curve["cache_keys"], dtype=np.float64)
    total = keys[-1] if keys.size and keys[-1] > 0 else 1.0
    ax.plot(keys / total, _values(curve["hit_ratio"]), color=palette[0], label="LRU (every size)")
    points = {float(f): v for f, v in stats["lru_hit_ratio"].items() if v is not None}
    if points:
        ax.plot(list(points), list(points.values()), "o", ms=3, color=palette[0])
    belady = {float(f): v for f, v in stats["belady_hit_ratio"].items() if v is not None}
    if belady:
        ax.plot(list(belady), list(belady.values()), "s", ms=6, color=palette[3],
                label="Belady MIN")
    ax.set(title="Expert-cache hit ratio", xlabel="cache size (fraction of all L×E experts)",
           ylabel="hit ratio")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right")


def _panel_lookahead(ax: Any, stats: dict[str, Any], palette: list) -> None:
    lookahead = stats["lookahead_accuracy"]
    ax.set(title="Lookahead accuracy", xlabel="target MoE layer",
           ylabel="share of true top-k recovered")
    if not lookahead:
        ax.text(0.5, 0.5, "no lookahead columns in this trace", ha="center", va="center",
                transform=ax.transAxes, color="grey")
        return
    for i, (d, block) in enumerate(sorted(lookahead.items(), key=lambda it: int(it[0]))):
        values = _values(block["per_layer"])
        ax.plot(np.arange(values.size), values, marker="o", ms=3, color=palette[i % 10],
                label=f"distance {d}, mean {_fmt(block['mean'])}")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right")


def _panel_traffic(ax: Any, stats: dict[str, Any], palette: list) -> None:
    traffic = stats["traffic"]
    top = _values(traffic["top_half_share"]["per_layer"])
    need = _values(traffic["experts_for_95pct"]["per_layer"])
    layers = np.arange(top.size)
    ax.plot(layers, top, marker="o", ms=3, color=palette[0],
            label=f"share to top half of experts, mean {_fmt(traffic['top_half_share']['mean'])}")
    ax.plot(layers, need, marker="s", ms=3, color=palette[1],
            label="experts needed for 95 %, mean "
                  f"{_fmt(traffic['experts_for_95pct']['mean'])}")
    alpha = stats["power_law_alpha"]["mean"]
    ax.set(title=f"Traffic concentration (power-law α mean {_fmt(alpha)})", xlabel="MoE layer",
           ylabel="fraction")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right")


def _panel_reuse(ax: Any, stats: dict[str, Any], palette: list) -> None:
    block = stats["adjacent_reuse_ratio"]
    values = _values(block["per_layer"])
    ax.plot(np.arange(values.size), values, marker="o", ms=3, color=palette[2],
            label=f"observed / chance overlap, mean {_fmt(block['mean'])}")
    ax.axhline(1.0, color="grey", ls="--", lw=1, label="chance (popularity only)")
    reuse = stats["reuse_distance_tokens"]
    ax.set(title=f"Adjacent-token reuse (reuse distance p50 {_fmt(reuse['p50'])}, "
                 f"p90 {_fmt(reuse['p90'])} tokens)",
           xlabel="MoE layer", ylabel="reuse ratio (×)")
    top = np.nanmax(values) if np.isfinite(values).any() else 1.0
    ax.set_ylim(0, max(1.2, 1.1 * top))
    ax.legend(fontsize=7, loc="lower right")


def plot_stats(stats: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Draw the ``compute_stats`` dict as a six-panel PNG at ``path`` and return the path.

    Parent folders are created; the file is written atomically (a temporary file in the same
    folder renamed over ``path``). Raises :class:`~traces.errors.ConfigError` when ``stats`` is
    not a ``moe-trace-stats/1`` dict.
    """
    if not isinstance(stats, dict) or stats.get("schema") != _SCHEMA:
        raise ConfigError(f"plot_stats expects a {_SCHEMA!r} dict from compute_stats")
    path = Path(path)
    info = stats["trace"]
    palette = sns.color_palette("tab10", 10)
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(18, 10), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, 3)
        _panel_entropy(axes[0, 0], stats, palette)
        _panel_information(axes[0, 1], stats, palette)
        _panel_cache(axes[0, 2], stats, palette)
        _panel_lookahead(axes[1, 0], stats, palette)
        _panel_traffic(axes[1, 1], stats, palette)
        _panel_reuse(axes[1, 2], stats, palette)
        for ax in axes.flat:
            ax.title.set_fontsize(10)
        fig.suptitle(f"{info['model']}: {info['tokens']:,} tokens, {info['requests']:,} requests, "
                     f"L={info['moe_layers']}, E={info['experts']}, k={info['top_k']} "
                     f"(log2 E = {math.log2(info['experts']):.3g} bits)")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    return path
