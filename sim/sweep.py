"""Hydra sweeps of ``moe-sim``: the sweep plan, each job's state, and the combined table.

``moe-sim --multirun policy=lru,gate-lookahead cache.fraction=0.25,0.5`` runs one Hydra job per
combination (the joblib launcher by default; ``hydra/launcher=slurm`` for SLURM through submitit).
Before any job starts, ``moe-sim`` writes the **plan** (``sweep.json``: the command's arguments
and every job's overrides, in Hydra's job order) into the sweep folder. Each job writes its usual
outputs into ``<sweep dir>/<job number>/`` and, once they are all written, the marker ``.done``;
a job that fails on a user error writes ``error.txt`` instead.

A job is therefore in one of three states (:func:`job_state`): ``ok`` (``.done``), ``failed``
(``error.txt``) or ``missing`` (no folder: it never started; a folder without ``.done``: it was
killed, preempted or interrupted). :func:`collect` reads every job of the plan into one table
with a ``status`` and an ``error`` column, written as ``sweep.csv`` and ``sweep.md``. ``moe-sim``
writes that table whenever a sweep ends, however it ends (a killed job, a launcher error,
Ctrl-C); ``moe-sim sweep collect DIR`` rebuilds it and ``moe-sim sweep resume DIR`` reruns only
the missing and failed jobs (with the sweep's own launcher; finished jobs are skipped).

Sweep folders written before plans existed (no ``sweep.json``) are read from their job folders:
a job with results and no ``.done`` counts as finished there.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from moe_offload_lab.traces.atomic import atomic_path, write_text
from moe_offload_lab.traces.errors import ConfigError

ERROR_FILE = "error.txt"
DONE_FILE = ".done"
PLAN_FILE = "sweep.json"
PLAN_VERSION = 1
OK, FAILED, MISSING = "ok", "failed", "missing"
METRICS = ("tpot_ms_mean", "tpot_ms_p50", "tpot_ms_p99", "ttft_ms_mean", "tokens_per_s",
           "hit_rate", "h2d_bytes", "stall_s", "prefetch_precision", "prefetch_recall",
           "wasted_prefetch_bytes", "sim_wall_s")
CLUSTER_METRICS = ("imbalance_before_mean", "imbalance_after_mean", "prefill_latency_ms_mean",
                   "decode_tokens_per_s", "replica_bytes")  # expert-parallel runs (sim.cluster)
_RESULT_FILES = ("summaries.json", "summary.json")


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """Every combination of the sweep overrides, as plain override lists (Hydra's grammar:
    ``a=x,y``, ``choice(...)``, ``range(...)``; Hydra's own ``hydra.*`` overrides are dropped),
    in Hydra's job order (the first override varies slowest).

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


# ---- the plan -----------------------------------------------------------------------------------
def write_plan(sweep_dir: str | Path, args: Sequence[str], jobs: Sequence[Sequence[str]]) -> Path:
    """Record the sweep's arguments (Hydra's argv, without the sweep folder), its jobs and the
    working folder (a resume runs there)."""
    plan = {"version": PLAN_VERSION, "args": list(args), "jobs": [list(j) for j in jobs],
            "cwd": os.getcwd()}  # where relative paths of the overrides are resolved
    return write_text(Path(sweep_dir) / PLAN_FILE, json.dumps(plan, indent=1) + "\n")


def read_plan(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The plan of a sweep folder (None for a sweep written before plans existed)."""
    path = Path(sweep_dir) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable sweep plan ({exc})") from None
    if (not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION
            or not isinstance(plan.get("args"), list) or not isinstance(plan.get("jobs"), list)):
        raise ConfigError(f"{path}: not a moe-sim sweep plan (version {PLAN_VERSION})")
    return plan


# ---- job states ---------------------------------------------------------------------------------
def job_state(job_dir: Path, planned: bool = True) -> tuple[str, str]:
    """``(state, message)`` of a job folder: ok, failed (with its error) or missing (with why).
    ``planned``: the sweep has a plan, so only ``.done`` marks a finished job."""
    if (job_dir / DONE_FILE).is_file():
        return OK, ""
    error = job_dir / ERROR_FILE
    if error.is_file():
        lines = error.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return FAILED, lines[0] if lines else "failed (no message)"
    if not job_dir.is_dir():
        return MISSING, "never ran"
    if not planned and any((job_dir / name).is_file() for name in _RESULT_FILES):
        return OK, ""
    return MISSING, "did not finish (killed or interrupted)"


def start_job(job_dir: Path) -> None:
    """A job (re)starts: forget an earlier attempt's state."""
    for name in (DONE_FILE, ERROR_FILE):
        (job_dir / name).unlink(missing_ok=True)


def finish_job(job_dir: Path) -> None:
    """A job's outputs are all written: mark it done."""
    write_text(job_dir / DONE_FILE, "")


def fail_job(job_dir: Path, message: str) -> None:
    """A job failed on a user error: record its message."""
    write_text(job_dir / ERROR_FILE, f"{message}\n")


def _job_number(path: Path) -> int:
    return int(path.name) if path.name.isdigit() else -1


def job_overrides(job_dir: Path) -> dict[str, str]:
    """A sweep job's overrides from Hydra's ``.hydra/overrides.yaml`` (``+``/``~`` stripped,
    Hydra's own left out); empty when the file is missing."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    items = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    return _override_map(str(item) for item in items)


def _override_map(items: Any) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in items if "=" in item)
    return {k.lstrip("+~"): v for k, v in pairs if not k.lstrip("+~").startswith("hydra")}


def _jobs(sweep_dir: Path, plan: dict[str, Any] | None) -> list[tuple[int, dict[str, str]]]:
    """(number, overrides) of every job: the plan's, else the numbered folders'."""
    if plan is not None:
        return [(i, _override_map(job)) for i, job in enumerate(plan["jobs"])]
    folders = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()
                      and (p / ".hydra").is_dir()), key=_job_number)
    return [(_job_number(p), job_overrides(p)) for p in folders]


def states(sweep_dir: str | Path) -> dict[int, tuple[str, str]]:
    """Job number -> ``(state, message)`` for every job of a sweep folder."""
    sweep_dir = Path(sweep_dir)
    plan = read_plan(sweep_dir)
    return {n: job_state(sweep_dir / str(n), plan is not None) for n, _ in _jobs(sweep_dir, plan)}


# ---- the combined table -------------------------------------------------------------------------
def _job_rows(job_dir: Path) -> list[dict[str, Any]]:
    summaries = job_dir / "summaries.json"  # an experiment=compare job: one row per run
    if summaries.is_file():
        return [{"run": s.get("label"), **s}
                for s in json.loads(summaries.read_text(encoding="utf-8"))]
    summary = job_dir / "summary.json"
    if summary.is_file():
        return [json.loads(summary.read_text(encoding="utf-8"))]
    return [{}]


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job (per run for comparison jobs): the swept overrides, then the headline
    metrics (offloading or expert-parallel, whichever the jobs report), then ``status`` (ok,
    failed, missing) and ``error`` (why, empty when ok). Every job of the plan appears, in job
    order, finished or not."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir}: no such sweep folder")
    plan = read_plan(sweep_dir)
    jobs = _jobs(sweep_dir, plan)
    rows, keys = [], []
    for number, overrides in jobs:
        keys += [k for k in overrides if k not in keys]
        state, message = job_state(sweep_dir / str(number), plan is not None)
        for row in (_job_rows(sweep_dir / str(number)) if state == OK else [{}]):
            values = {k: row.get(k) for k in ("run", "policy", *METRICS, *CLUSTER_METRICS)}
            rows.append({"job": number, **overrides,
                         **{k: v for k, v in values.items() if v is not None or k not in overrides},
                         "status": state, "error": message})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.drop(columns=[c for c in ("run", "policy", *METRICS, *CLUSTER_METRICS)
                                if c in frame and frame[c].isna().all()])
    lead = ["job", *keys]
    return frame[lead + [c for c in frame.columns if c not in lead]]


def write(table: pd.DataFrame, sweep_dir: str | Path) -> list[Path]:
    """Write ``sweep.csv`` and ``sweep.md`` into the sweep folder (each atomically)."""
    from moe_offload_lab.sim.compare import markdown

    sweep_dir = Path(sweep_dir)
    csv, md = sweep_dir / "sweep.csv", sweep_dir / "sweep.md"
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    write_text(md, markdown(table))
    return [csv, md]


def unfinished(table: pd.DataFrame) -> list[int]:
    """Job numbers of a collected table that are missing or failed."""
    if table.empty:
        return []
    return sorted({int(j) for j, s in zip(table["job"], table["status"], strict=True)
                   if s != OK})
