"""Hydra sweeps of ``moe-sim``: expanding sweep overrides, and the combined table of a sweep.

``moe-sim --multirun policy=lru,gate-lookahead cache.fraction=0.25,0.5`` runs one Hydra job per
combination (the joblib launcher by default; ``hydra/launcher=slurm`` for SLURM through submitit).
Each job writes its usual outputs into ``<sweep dir>/<job number>/`` with Hydra's
``.hydra/overrides.yaml``; when the sweep ends :func:`collect` reads them back into one table,
written as ``sweep.csv`` and ``sweep.md`` in the sweep folder.

A job that fails on a user error writes ``error.txt`` instead of results; it appears in the table
with its message, and ``moe-sim`` exits with status 2 after the sweep.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from moe_offload_lab.traces.errors import ConfigError

ERROR_FILE = "error.txt"
METRICS = ("tpot_ms_mean", "tpot_ms_p50", "tpot_ms_p99", "ttft_ms_mean", "tokens_per_s",
           "hit_rate", "h2d_bytes", "stall_s", "prefetch_precision", "prefetch_recall",
           "wasted_prefetch_bytes", "sim_wall_s")
CLUSTER_METRICS = ("imbalance_before_mean", "imbalance_after_mean", "prefill_latency_ms_mean",
                   "decode_tokens_per_s", "replica_bytes")  # expert-parallel runs (sim.cluster)


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """Every combination of the sweep overrides, as plain override lists (Hydra's grammar:
    ``a=x,y``, ``choice(...)``, ``range(...)``; Hydra's own ``hydra.*`` overrides are dropped).

    Used to check each job's config before any job starts. Raises ConfigError on bad syntax.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    choices: list[list[str]] = []
    for override in parsed:
        if override.is_hydra_override():
            continue
        if override.is_sweep_override():
            if override.is_interval_sweep():
                raise ConfigError(f"{override.input_line!r}: interval sweeps need a tuning "
                                  f"sweeper (moe-tune), not --multirun")
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(combo) for combo in itertools.product(*choices)]


def job_overrides(job_dir: Path) -> dict[str, str]:
    """A sweep job's overrides from Hydra's ``.hydra/overrides.yaml`` (``+``/``~`` stripped,
    Hydra's own left out); empty when the file is missing."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    items = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    pairs = (str(item).split("=", 1) for item in items if "=" in str(item))
    return {k.lstrip("+~"): v for k, v in pairs if not k.lstrip("+~").startswith("hydra")}


def _job_rows(job_dir: Path) -> list[dict[str, Any]]:
    error = job_dir / ERROR_FILE
    if error.is_file():
        return [{"error": error.read_text(encoding="utf-8").strip()}]
    summaries = job_dir / "summaries.json"  # an experiment=compare job: one row per run
    if summaries.is_file():
        return [{"run": s.get("label"), **s}
                for s in json.loads(summaries.read_text(encoding="utf-8"))]
    summary = job_dir / "summary.json"
    if summary.is_file():
        return [json.loads(summary.read_text(encoding="utf-8"))]
    return [{"error": "no results (the job did not finish)"}]


def _job_number(path: Path) -> int:
    return int(path.name) if path.name.isdigit() else -1


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job (per run for comparison jobs): the swept overrides, then the headline
    metrics (offloading or expert-parallel, whichever the jobs report), then ``error`` (empty
    when the job succeeded). Jobs in job-number order."""
    sweep_dir = Path(sweep_dir)
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=_job_number)
    rows, keys = [], []
    for job in jobs:
        overrides = job_overrides(job)
        keys += [k for k in overrides if k not in keys]
        for row in _job_rows(job):
            values = {k: row.get(k) for k in ("run", "policy", *METRICS, *CLUSTER_METRICS)}
            rows.append({"job": _job_number(job), **overrides,
                         **{k: v for k, v in values.items() if v is not None or k not in overrides},
                         "error": row.get("error", "")})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.drop(columns=[c for c in ("run", "policy", *METRICS, *CLUSTER_METRICS)
                                if c in frame and frame[c].isna().all()])
    lead = ["job", *keys]
    return frame[lead + [c for c in frame.columns if c not in lead]]


def write(table: pd.DataFrame, sweep_dir: str | Path) -> list[Path]:
    """Write ``sweep.csv`` and ``sweep.md`` into the sweep folder."""
    from moe_offload_lab.sim.compare import markdown

    sweep_dir = Path(sweep_dir)
    csv, md = sweep_dir / "sweep.csv", sweep_dir / "sweep.md"
    table.to_csv(csv, index=False)
    md.write_text(markdown(table), encoding="utf-8")
    return [csv, md]
