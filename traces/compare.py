"""``moe-trace compare A.parquet B.parquet``: two traces' routing profiles side by side.

The rows are the statistics of :func:`traces.analysis.profile.routing_profile` that decide how an
offloading policy fares: LRU and Belady hit ratios at 25/50/75% of the (layer, expert) keys,
adjacent-token overlap and top-1 reuse against chance, top-1 transition predictability, per-layer
skew, entropy and lookahead accuracy. :func:`comparison_rows` gives them as data (the fit check
and the preset table use the same rows), :func:`format_rows` as an aligned or Markdown table and
:func:`plot_comparison` as a four-panel figure (LRU curves, skew, adjacent reuse and top-1
transition accuracy per layer).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.traces.atomic import atomic_path
from moe_offload_lab.traces.errors import ConfigError

Getter = Callable[[dict[str, Any]], float | None]


def _get(*keys: str) -> Getter:
    def getter(profile: dict[str, Any]) -> float | None:
        value: Any = profile
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    return getter


# (row label, getter): the statistics compared, in table order
ROWS: list[tuple[str, Getter]] = [
    *[(f"LRU hit ratio at {f}% of the keys", _get("lru_hit_ratio", s))
      for f, s in (("25", "0.25"), ("50", "0.5"), ("75", "0.75"))],
    *[(f"Belady hit ratio at {f}%", _get("belady_hit_ratio", s))
      for f, s in (("25", "0.25"), ("50", "0.5"), ("75", "0.75"))],
    ("adjacent-token overlap, shared experts / k", _get("adjacent_overlap", "observed")),
    ("  chance (from popularity)", _get("adjacent_overlap", "chance")),
    ("  ratio to chance", _get("adjacent_overlap", "ratio")),
    ("top-1 reuse P(T_t+1 = T_t)", _get("top1_reuse", "observed")),
    ("  chance", _get("top1_reuse", "chance")),
    ("  ratio to chance", _get("top1_reuse", "ratio")),
    ("overlap ratio at lag 16 tokens", _get("lagged_overlap_ratio", "16")),
    ("top-1 transition accuracy (half/half)", _get("top1_transition", "accuracy")),
    ("  most popular top-1 (half/half)", _get("top1_transition", "popular")),
    ("hottest expert / even share, mean", _get("hottest_share", "mean")),
    ("hottest expert / even share, max", _get("hottest_share", "max")),
    ("entropy, bits per layer", _get("entropy_bits", "mean")),
    ("top-1 cross-layer MI d=1, bits", _get("cross_layer_mi_top1", "mean")),
    ("lookahead accuracy d=1", _get("lookahead_accuracy", "mean")),
]


def comparison_rows(profiles: Sequence[dict[str, Any]]) -> list[tuple[str, list[float | None]]]:
    """``[(label, [value per profile])]`` for every row of :data:`ROWS`."""
    return [(label, [getter(p) for p in profiles]) for label, getter in ROWS]


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_rows(rows: list[tuple[str, list[float | None]]], labels: Sequence[str], *,
                markdown: bool = False, difference: bool = True) -> str:
    """The rows as a table with one column per profile (and ``last - first`` when asked)."""
    heads = [*labels, *(["difference"] if difference and len(labels) >= 2 else [])]
    body = []
    for label, values in rows:
        cells = [_cell(v) for v in values]
        if difference and len(values) >= 2:
            a, b = values[0], values[-1]
            cells.append("-" if a is None or b is None else f"{b - a:+.3f}")
        body.append((label, cells))
    if markdown:
        lines = ["| statistic | " + " | ".join(heads) + " |",
                 "|---|" + "---:|" * len(heads)]
        lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in body]
        return "\n".join(lines)
    width = max(len(label) for label, _ in body)
    cols = [max(len(h), 8) for h in heads]
    lines = [" " * width + "  " + "  ".join(h.rjust(c) for h, c in zip(heads, cols, strict=True))]
    lines += [label.ljust(width) + "  "
              + "  ".join(v.rjust(c) for v, c in zip(cells, cols, strict=True))
              for label, cells in body]
    return "\n".join(lines)


def _per_layer(profile: dict[str, Any], *keys: str) -> np.ndarray:
    values = _get(*keys)(profile) or []
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def plot_comparison(profiles: Sequence[dict[str, Any]], labels: Sequence[str],
                    path: str | os.PathLike[str]) -> Path:
    """Four panels (LRU curve with Belady points, skew, adjacent reuse and top-1 transition
    accuracy per layer) as a PNG at ``path``, written atomically."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"the figure is written as PNG; name it *.png, not {path.name}")
    palette = sns.color_palette("tab10", 10)
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(13, 8.5), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, 2)
        for i, (profile, label) in enumerate(zip(profiles, labels, strict=False)):
            color = palette[i % 10]
            curve = profile["lru_curve"]
            axes[0, 0].plot(curve["fraction"], curve["hit_ratio"], color=color,
                            label=f"{label} LRU")
            belady = profile.get("belady_hit_ratio") or {}
            if belady:
                axes[0, 0].plot([float(f) for f in belady], list(belady.values()), "s--",
                                color=color, ms=5, label=f"{label} Belady")
            for ax, keys in ((axes[0, 1], ("hottest_share", "per_layer")),
                             (axes[1, 0], ("adjacent_overlap", "per_layer_ratio")),
                             (axes[1, 1], ("top1_transition", "per_layer"))):
                values = _per_layer(profile, *keys)
                ax.plot(np.arange(values.size), values, marker="o", ms=3, color=color,
                        label=label)
        axes[0, 0].set(title="hit ratio against cache size", xlabel="fraction of (layer, expert) "
                       "keys cached", ylabel="hit ratio", xlim=(0, 1), ylim=(0, 1))
        axes[0, 1].set(title="skew: hottest expert over an even share", xlabel="MoE layer",
                       ylabel="× even share")
        axes[1, 0].set(title="adjacent-token overlap over chance", xlabel="MoE layer",
                       ylabel="ratio")
        axes[1, 1].set(title="top-1 transition accuracy l → l+1 (first half → second half)",
                       xlabel="source MoE layer", ylabel="accuracy")
        for ax in axes.flat:
            ax.title.set_fontsize(10)
            ax.legend(fontsize=7)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    return path
