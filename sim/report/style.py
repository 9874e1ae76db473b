"""Shared look of the report figures and tables: seaborn theme, headless saving, markdown.

Figures are :class:`matplotlib.figure.Figure` objects drawn on the Agg canvas (no pyplot, no
display), in seaborn's ``whitegrid`` theme like :mod:`sim.plot`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
PART_LABELS = {"non_expert": "non-expert (attention, router)", "gpu_expert": "GPU experts",
               "cpu_expert": "CPU experts", "stall": "stall (waiting for copies)",
               "policy": "policy decisions"}


@dataclass
class Section:
    """One figure of the report: file stem, heading, explanation, the table behind it."""

    name: str
    title: str
    text: str
    table: pd.DataFrame
    figure: Figure


def new_figure(width: float, height: float) -> Figure:
    """A blank figure in the report's theme."""
    sns.set_theme(style="whitegrid", context="paper")
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Lay out and write ``fig`` as PNG at ``path``."""
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)
    return path


def figure_height(rows: int, per_row: float = 0.35, low: float = 3.0, high: float = 14.0) -> float:
    """A height that gives each of ``rows`` horizontal bars room."""
    return min(high, max(low, 1.2 + per_row * rows))


def wide_range(values: Any, ratio: float = 20.0) -> bool:
    """Whether positive ``values`` span more than ``ratio`` (then a log axis reads better)."""
    clean = [float(v) for v in values if v is not None and v == v and float(v) > 0]
    return bool(clean) and max(clean) / min(clean) > ratio


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(table: pd.DataFrame, max_rows: int = 60) -> str:
    """``table`` as GitHub markdown (first column left-aligned, numbers to 4 digits); longer
    tables are cut to ``max_rows`` with a note."""
    shown = table.head(max_rows)
    header = "| " + " | ".join(str(c) for c in shown.columns) + " |"
    rule = "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(shown.columns))) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |"
            for row in shown.itertuples(index=False)]
    lines = [header, rule, *body]
    if len(table) > max_rows:
        lines.append(f"\n({len(table) - max_rows} more rows in the CSV file)")
    return "\n".join(lines) + "\n"
