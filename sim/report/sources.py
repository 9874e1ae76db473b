"""What a folder holds, read into one table of runs (:class:`Source`).

- a sweep (``moe-sim --multirun``): ``multirun.yaml`` / ``sweep.csv`` and numbered job folders
  with ``.hydra/overrides.yaml`` and ``summary.json`` (or ``summaries.json`` for comparison
  jobs, or ``error.txt`` for failed ones);
- a comparison (``experiment=compare``): ``summaries.json`` (else just ``compare.csv``);
- a single run: ``summary.json`` with ``steps.parquet`` and ``events.parquet``;
- a tuning study: a folder with ``study.db`` (``moe-tune``'s default storage; the study is the
  folder's name, or the storage's only study), or any storage given as URL and study name.

Every run becomes a row of :attr:`Source.runs`: ``label`` (unique, for axes), ``series`` (the
policy, or a comparison's run label: colours), ``group`` (the other swept settings: runs of one
group are compared with each other), ``dir`` (its folder when it has step and event files) and
the run's summary values. Unusable input raises :class:`~traces.errors.ConfigError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from moe_offload_lab.sim.compare import RUNS_DIR, run_folder
from moe_offload_lab.sim.sweep import job_overrides
from moe_offload_lab.sim.sweep import states as sweep_states
from moe_offload_lab.traces.errors import ConfigError

REPORT_DIR = "report"


@dataclass
class Source:
    """The runs of a folder (or the trials of a study) and how they were found."""

    kind: str  # "sweep", "comparison", "run" or "study"
    where: str
    runs: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    study: Any = None  # the optuna Study (kind "study")
    objectives: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """A one-line description for headings."""
        first = self.runs.iloc[0] if len(self.runs) else {}
        what = ", ".join(str(first[k]) for k in ("model", "hardware")
                         if k in self.runs and pd.notna(first[k]))
        return f"{self.kind} {self.where}" + (f" ({what})" if what else "")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None


def _jobs(folder: Path) -> list[Path]:
    jobs = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()
            and ((p / ".hydra").is_dir() or (p / "summary.json").is_file())]
    return sorted(jobs, key=lambda p: int(p.name))


def is_sweep(folder: Path) -> bool:
    """Whether ``folder`` looks like a ``moe-sim --multirun`` sweep folder."""
    return ((folder / "multirun.yaml").is_file() or (folder / "sweep.csv").is_file()
            or bool(_jobs(folder)))


def _finish(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if frame["label"].duplicated().any():  # same settings twice: keep labels unique
        frame["label"] = [f"{label} #{i}" if dup else label for i, (label, dup) in enumerate(
            zip(frame["label"], frame["label"].duplicated(keep=False), strict=True))]
    return frame


def load_sweep(folder: Path) -> Source:
    """The finished jobs of a sweep folder (failed jobs are listed in ``notes``)."""
    jobs = _jobs(folder)
    found = [(job, job_overrides(job)) for job in jobs]
    keys = sorted({k for _, o in found for k in o})
    varying = [k for k in keys if len({o.get(k) for _, o in found}) > 1]
    rows, notes = [], []
    for job, overrides in found:
        group = ", ".join(f"{k}={overrides.get(k, '-')}" for k in varying if k != "policy")
        if (job / "error.txt").is_file():
            message = (job / "error.txt").read_text(encoding="utf-8").strip().splitlines()
            notes.append(f"job {job.name} failed: {message[0] if message else 'no message'}")
            continue
        if (job / "summaries.json").is_file():  # an experiment=compare job
            for summary in _read_json(job / "summaries.json"):
                series = str(summary.get("label") or summary.get("policy"))
                rows.append({**summary, "label": f"{series}, {group}" if group else series,
                             "series": series, "group": group, "job": int(job.name),
                             "dir": None, **{f"override:{k}": overrides.get(k) for k in keys}})
        elif (job / "summary.json").is_file():
            summary = _read_json(job / "summary.json")
            series = str(overrides.get("policy") or summary.get("policy"))
            rows.append({**summary, "label": f"{series}, {group}" if group else series,
                         "series": series, "group": group, "job": int(job.name),
                         "dir": str(job), **{f"override:{k}": overrides.get(k) for k in keys}})
        else:
            notes.append(f"job {job.name} has no results (it did not finish)")
    notes += [f"job {n} is missing ({message})" for n, (state, message) in sweep_states(
        folder).items() if state == "missing" and not (folder / str(n)).is_dir()]
    if not rows:
        detail = f" ({len(notes)} failed or unfinished)" if notes else ""
        raise ConfigError(f"{folder}: the sweep has no finished jobs{detail}")
    return Source("sweep", str(folder), _finish(rows), notes)


def load_comparison(folder: Path) -> Source:
    """A comparison folder: ``summaries.json`` (full summaries) or only ``compare.csv``."""
    if (folder / "summaries.json").is_file():
        summaries = _read_json(folder / "summaries.json")
        if not isinstance(summaries, list) or not summaries:
            raise ConfigError(f"{folder / 'summaries.json'}: no runs in it")
        rows = []
        for s in summaries:
            label = str(s.get("label") or s.get("policy"))
            run_dir = folder / RUNS_DIR / run_folder(label)  # per-run files, when written
            rows.append({**s, "label": label, "series": label, "group": "",
                         "dir": str(run_dir) if (run_dir / "steps.parquet").is_file() else None})
        notes = [] if all(r["dir"] for r in rows) else [
            "some runs of this comparison have no per-step or event files: the latency figure "
            "shows summary percentiles and the timeline is limited"]
        return Source("comparison", str(folder), _finish(rows), notes)
    try:
        table = pd.read_csv(folder / "compare.csv")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder / 'compare.csv'}: unreadable ({exc})") from None
    if table.empty or "policy" not in table:
        raise ConfigError(f"{folder / 'compare.csv'}: no runs in it")
    table = table.assign(label=table["policy"].astype(str), series=table["policy"].astype(str),
                         group="", dir=None)
    return Source("comparison", str(folder), _finish(table.to_dict("records")),
                  ["only compare.csv was found: figures are limited to its columns"])


def load_run(folder: Path) -> Source:
    """A single run folder."""
    summary = _read_json(folder / "summary.json")
    label = str(summary.get("policy", folder.name))
    row = {**summary, "label": label, "series": label, "group": "", "dir": str(folder)}
    return Source("run", str(folder), pd.DataFrame([row]))


def load_folder(folder: str | Path) -> Source:
    """Detect what ``folder`` holds and read it (see the module docstring)."""
    folder = Path(folder)
    if not folder.exists():
        raise ConfigError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder")
    if (folder / "study.db").is_file():
        from moe_offload_lab.sim.report.tuning import study_folder_storage

        return load_study(*study_folder_storage(folder))
    if is_sweep(folder):
        return load_sweep(folder)
    if (folder / "summaries.json").is_file() or (folder / "compare.csv").is_file():
        return load_comparison(folder)
    if (folder / "summary.json").is_file():
        return load_run(folder)
    raise ConfigError(f"{folder}: nothing to report (expected a moe-sim run, comparison or "
                      f"sweep folder, or a moe-tune study folder with study.db)")


def load_study(storage: str, name: str) -> Source:
    """A tuning study in an Optuna storage (see :mod:`sim.report.tuning`)."""
    from moe_offload_lab.sim.report.tuning import study_source

    return study_source(storage, name)


def runs_source(runs: list[dict[str, Any]], where: str = "runs") -> Source:
    """A Source of run folders written by :meth:`sim.run.SimResult.write` (e.g. from a
    notebook): each item ``{"label", "dir", "series"?, "group"?}``; ``series`` defaults to the
    run's policy and ``group`` (the settings runs are compared within) to ``""``."""
    rows = []
    for run in runs:
        folder = Path(run["dir"])
        if not (folder / "summary.json").is_file():
            raise ConfigError(f"{folder}: no summary.json (not a run folder)")
        summary = _read_json(folder / "summary.json")
        rows.append({**summary, "label": str(run["label"]),
                     "series": str(run.get("series") or summary.get("policy")),
                     "group": str(run.get("group") or ""), "dir": str(folder)})
    if not rows:
        raise ConfigError("no runs given")
    return Source("runs", where, _finish(rows))
