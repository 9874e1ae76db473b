"""Why prefetching helped or not: what became of every prefetch copy, per MoE layer.

Read from a run's ``events.parquet`` alone (the simulator's and the executor's, one schema), for
the layer each prefetch was for (a copy row names the expert copied):

- **on time**: the expert was resident when its layer ran (compute rows ``prefetch_hit``);
- **late**: its layer needed it while the copy was still queued or crossing the link, so the
  layer stalled for it (compute rows ``inflight``: in both engines only a prefetch is in flight
  when its layer starts, a demand copy being issued by that layer itself);
- **never used**: the copy landed but the expert left the cache, or the run ended, before its
  layer needed it (copy rows ``prefetch``);
- **wasted**: the copy was cancelled in flight (a stale prediction, or the run's end): link time
  spent on bytes that were thrown away (copy rows ``cancelled``).

``on time + late`` equals the copies marked ``prefetch_used``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from moe_offload_lab.sim.report.sources import Source
from moe_offload_lab.sim.report.style import Section, new_figure

OUTCOMES = ("on time", "late", "never used", "wasted")
COLORS = ("#2a9d8f", "#e9c46a", "#9e9e9e", "#e76f51")  # green, amber, grey, red
_COLUMNS = ["kind", "layer", "detail"]
MAX_PANELS = 6


def prefetch_outcomes(events: pd.DataFrame) -> pd.DataFrame:
    """One row per MoE layer a prefetch was for: ``layer`` and the :data:`OUTCOMES` counts."""
    kind, detail = events["kind"].astype(str), events["detail"].astype(str)
    layer = events["layer"].to_numpy()  # [N]
    masks = {
        "on time": (kind == "compute") & (detail == "prefetch_hit"),
        "late": (kind == "compute") & (detail == "inflight"),
        "never used": (kind == "copy") & (detail == "prefetch"),
        "wasted": (kind == "copy") & (detail == "cancelled"),
    }
    layers = sorted({int(v) for m in masks.values() for v in layer[m.to_numpy()]})
    table = pd.DataFrame({"layer": layers})
    for name, mask in masks.items():
        counts = pd.Series(layer[mask.to_numpy()]).value_counts()
        table[name] = [int(counts.get(v, 0)) for v in layers]
    return table


def _runs_with_events(source: Source) -> list[tuple[str, pd.DataFrame]]:
    found = []
    for run in source.runs.itertuples(index=False):
        folder = getattr(run, "dir", None)
        if not folder or not (Path(folder) / "events.parquet").is_file():
            continue
        if not (getattr(run, "prefetch_copies", 1) or 0) > 0:  # summaries say there are none
            continue
        events = pd.read_parquet(Path(folder) / "events.parquet", columns=_COLUMNS)
        table = prefetch_outcomes(events)
        if table[list(OUTCOMES)].to_numpy().sum() > 0:
            found.append((str(run.label), table))
    return found


def prefetch_section(source: Source) -> Section | str:
    """Stacked bars per MoE layer of each run's prefetch outcomes (small multiples)."""
    runs = _runs_with_events(source)
    if not runs:
        return "no run with prefetch copies in an events.parquet"
    rows = []
    for label, table in runs:
        totals = {name: int(table[name].sum()) for name in OUTCOMES}
        rows.append({"run": label, "layer": "all", **totals})
        rows += [{"run": label, "layer": int(r.layer), **{n: int(getattr(r, _attr(n)))
                                                          for n in OUTCOMES}}
                 for r in table.rename(columns={n: _attr(n) for n in OUTCOMES}).itertuples()]
    frame = pd.DataFrame(rows)
    frame["issued"] = frame[list(OUTCOMES)].sum(axis=1)
    frame["on time %"] = 100 * frame["on time"] / frame["issued"].where(frame["issued"] > 0)
    frame = pd.concat([frame[frame["layer"] == "all"], frame[frame["layer"] != "all"]])
    shown = runs[:MAX_PANELS]
    cols = min(2, len(shown))
    panel_rows = -(-len(shown) // cols)
    fig = new_figure(6.5 * cols, 3.2 * panel_rows + 0.6)
    axes = np.atleast_1d(fig.subplots(panel_rows, cols, squeeze=False).ravel())  # [panels]
    colors = dict(zip(OUTCOMES, COLORS, strict=True))
    for ax, (label, table) in zip(axes, shown, strict=False):
        bottom = np.zeros(len(table))  # [layers]
        for name in OUTCOMES:
            values = table[name].to_numpy(dtype=float)  # [layers]
            ax.bar(table["layer"], values, bottom=bottom, color=colors[name], label=name,
                   width=0.85)
            bottom += values
        issued = int(bottom.sum())
        on_time = int(table["on time"].sum())
        ax.set(title=f"{label}: {issued} prefetches, {100 * on_time / max(issued, 1):.0f}% on "
                     f"time", xlabel="MoE layer the prefetch was for", ylabel="prefetch copies")
        ax.title.set_fontsize(9)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="upper right")
    more = (f" The figure shows the first {MAX_PANELS} of {len(runs)} runs with prefetches; "
            f"the table has all." if len(runs) > MAX_PANELS else "")
    text = ("What became of each prefetch copy, per MoE layer it was for, from the run's event "
            "log: *on time* (resident when its layer ran), *late* (its layer stalled waiting for "
            "the copy), *never used* (landed, then evicted or the run ended before its layer "
            "needed it) and *wasted* (cancelled in flight: link time spent on discarded bytes). "
            "Rows with layer `all` are each run's totals." + more)
    return Section("prefetch_outcomes", "Prefetch outcomes per layer", text,
                   frame.reset_index(drop=True), fig)


def _attr(name: str) -> str:
    return name.replace(" ", "_")
