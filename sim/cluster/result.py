"""The result of :func:`~sim.cluster.simulate.simulate_cluster` and how it is written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from moe_offload_lab.sim.cluster.timeline import write_cluster_trace
from moe_offload_lab.sim.eventlog import write_parquet
from moe_offload_lab.traces.atomic import write_text


@dataclass
class ClusterResult:
    """Frames and summary of one cluster run.

    - ``layers``: one row per (step, MoE layer) (:data:`sim.cluster.engine.LAYER_COLUMNS`);
    - ``steps``: one row per step (:func:`sim.cluster.metrics.step_frame`);
    - ``transfers``: one row per replica copy (step, layer, expert, src, dst, bytes, start_s,
      end_s, issued_s);
    - ``summary``: the headline numbers plus the run's configuration;
    - ``timeline``: Chrome trace JSON (one track per rank, one for replica copies).
    """

    summary: dict[str, Any]
    layers: pd.DataFrame
    steps: pd.DataFrame
    transfers: pd.DataFrame
    timeline: dict[str, Any] = field(repr=False, default_factory=dict)

    def write(self, out_dir: str | Path, timeline: bool = True) -> list[Path]:
        """Write ``summary.json``, ``steps.parquet``, ``layers.parquet``, ``transfers.parquet``
        and (unless turned off) ``timeline.json`` into ``out_dir`` (each atomically); returns
        the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [
            write_parquet(self.steps, out / "steps.parquet"),
            write_parquet(self.layers, out / "layers.parquet"),
            write_parquet(self.transfers, out / "transfers.parquet"),
            *([write_cluster_trace(self.timeline, out / "timeline.json")] if timeline else []),
            write_text(out / "summary.json", json.dumps(self.summary, indent=2, default=str)),
        ]
        return paths
