"""Reports of ``moe-tune`` studies: loading a study, its trials as runs, and its figures.

- multi-objective studies (``tpot_ms_mean,cache_bytes``): the Pareto front over all complete
  trials (the front is Optuna's ``best_trials``);
- single-objective studies: the optimisation history (each trial's value and the best so far)
  and the objective per policy choice.

The trials' summary values (hit rate, tokens/s, cache bytes...) come from the user attributes
``moe-tune`` records, so the generic figures (hit ratio against cache size) apply as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
from moe_offload_lab.sim.report.figures import draw_pareto
from moe_offload_lab.sim.report.sources import Source
from moe_offload_lab.sim.report.style import Section, new_figure, wide_range
from moe_offload_lab.traces.errors import ConfigError

UNITS = {"tpot_ms_mean": "mean time per output token (ms)",
         "tpot_ms_p99": "p99 time per output token (ms)",
         "step_latency_ms_mean": "mean step latency (ms)",
         "cache_bytes": "expert cache (bytes)", "gpu_memory_needed_gb": "GPU memory needed (GB)"}
ATTRS = ("tpot_ms_mean", "tpot_ms_p99", "step_latency_ms_mean", "cache_bytes", "capacity_slots",
         "tokens_per_s", "hit_rate")


def study_folder_storage(folder: Path) -> tuple[str, str]:
    """Storage URL and study name of a ``moe-tune`` study folder (``<out>/<study>/study.db``):
    the folder's name, or the only study in the file."""
    import optuna
    from moe_offload_lab.sim.tune.storage import default_storage, open_storage

    spec = default_storage(folder)
    names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(spec))]
    if folder.name in names:
        return spec, folder.name
    if len(names) == 1:
        return spec, names[0]
    raise ConfigError(f"{folder / 'study.db'}: holds studies {', '.join(names) or 'none'}; "
                      f"choose one with --storage and --study")


def _trial_row(trial: Any, objectives: tuple[str, ...], n_keys: int | None) -> dict[str, Any]:
    attrs = {k: trial.user_attrs[k] for k in ATTRS if k in trial.user_attrs}
    row = {"label": f"trial {trial.number}", "number": trial.number, "state": trial.state.name,
           "series": str(trial.params.get("policy", "(fixed policy)")), "group": "",
           "dir": None, **attrs,
           **{f"param:{k}": v for k, v in trial.params.items()}}
    if trial.values is not None:
        row.update({f"value:{o}": v for o, v in zip(objectives, trial.values, strict=True)})
    if "cache.fraction" in trial.params:
        row["cache_fraction"] = float(trial.params["cache.fraction"])
    elif n_keys and "capacity_slots" in attrs:
        row["cache_fraction"] = attrs["capacity_slots"] / n_keys
    return row


def study_source(storage: str, name: str) -> Source:
    """The trials of study ``name`` in ``storage`` as a :class:`Source` (complete trials are
    the runs; pruned and failed ones are counted in the notes)."""
    from moe_offload_lab.sim.tune.storage import mask
    from moe_offload_lab.sim.tune.study import open_study
    from optuna.trial import TrialState

    study = open_study(storage, name)  # read-only: a missing storage or study is refused
    space = study.user_attrs.get("space") or {}
    objectives = tuple(space.get("objective") or ["value"] * len(study.directions))
    if isinstance(space.get("objective"), str):
        objectives = (space["objective"],)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"study {name!r} in {mask(storage)} has no complete trials")
    rows = [_trial_row(t, objectives, None) for t in complete]
    counts = pd.Series([t.state.name.lower() for t in trials]).value_counts()
    notes = [f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    return Source("study", f"{name} ({mask(storage)})", pd.DataFrame(rows), notes, study,
                  objectives)


def _ylabel(objective: str) -> str:
    return UNITS.get(objective, objective)


def study_pareto_section(source: Source) -> Section | str:
    """The Pareto front of a latency / cache-bytes study."""
    if source.study is None or len(source.objectives) != 2:
        return "not a multi-objective study"
    latency, memory = source.objectives
    runs = source.runs
    scale = 1e9 if memory == "cache_bytes" else 1.0
    front = {t.number for t in source.study.best_trials}
    data = pd.DataFrame({"label": runs["label"], "policy": runs["series"],
                         "cache_gb": runs[f"value:{memory}"] / scale,
                         "latency_ms": runs[f"value:{latency}"],
                         "front": runs["number"].isin(front)})
    fig = draw_pareto(data, "policy" if data["policy"].nunique() > 1 else None,
                      f"Pareto front of study {source.study.study_name}", _ylabel(latency))
    params = [c for c in runs if c.startswith("param:") and c != "param:policy"]
    table = pd.concat([data, runs[params]], axis=1)
    table = table[table["front"]].sort_values("cache_gb").drop(columns="front")
    table.columns = [c.replace("param:", "") for c in table.columns]
    table = table.rename(columns={"label": "trial", "cache_gb": "cache GB",
                                  "latency_ms": latency})
    text = (f"Every complete trial's {latency} against the GPU memory of its expert cache; the "
            f"circled trials form the Pareto front ({len(front)} trials, listed below with their "
            f"parameters).")
    return Section("pareto", "Pareto front (tuning)", text, table, fig)


def history_section(source: Source) -> Section | str:
    """Optimisation history of a single-objective study."""
    from optuna.trial import TrialState

    if source.study is None or len(source.objectives) != 1:
        return "not a single-objective study"
    objective = source.objectives[0]
    rows = []
    for t in source.study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            value = t.values[0]
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        else:
            continue
        rows.append({"trial": t.number, "state": t.state.name.lower(), objective: value,
                     "policy": str(t.params.get("policy", "(fixed)"))})
    data = pd.DataFrame(rows)
    complete = data["state"] == "complete"
    data["best so far"] = data[objective].where(complete).cummin()
    fig = new_figure(9, 4.5)
    ax = fig.subplots()
    sns.scatterplot(data=data, x="trial", y=objective, hue="policy", style="state",
                    markers={"complete": "o", "pruned": "X"}, ax=ax, s=45)
    ax.step(data["trial"], data["best so far"], where="post", color="black", lw=1.3,
            label="best so far")
    if wide_range(data[objective]):
        ax.set_yscale("log")
    ax.set(xlabel="trial number", ylabel=_ylabel(objective),
           title=f"Optimisation history of study {source.study.study_name}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    text = (f"The {objective} of every trial in order (pruned trials at the value on the trace "
            f"prefix that got them pruned) and the best complete value so far.")
    return Section("history", "Optimisation history", text, data, fig)


def policy_section(source: Source) -> Section | str:
    """The objective of the complete trials per policy choice (single-objective studies)."""
    if source.study is None or len(source.objectives) != 1:
        return "not a single-objective study"
    objective = source.objectives[0]
    runs = source.runs
    if runs["series"].nunique() < 2:
        return "the study does not choose between policies"
    data = pd.DataFrame({"policy": runs["series"], objective: runs[f"value:{objective}"]})
    order = data.groupby("policy")[objective].min().sort_values().index.tolist()
    fig = new_figure(8, max(3.0, 1.0 + 0.4 * len(order)))
    ax = fig.subplots()
    sns.stripplot(data=data, y="policy", x=objective, order=order, hue="policy", ax=ax,
                  legend=False, size=6, jitter=0.15)
    if wide_range(data[objective]):
        ax.set_xscale("log")
    ax.set(xlabel=_ylabel(objective), ylabel="policy",
           title="Objective of the complete trials per policy")
    grouped = data.groupby("policy")[objective]
    table = pd.DataFrame({"trials": grouped.size(), "best": grouped.min(),
                          "median": grouped.median()}).loc[order].reset_index()
    text = f"The {objective} of each complete trial, grouped by the policy it chose; best first."
    return Section("policies", "Objective per policy", text, table, fig)


