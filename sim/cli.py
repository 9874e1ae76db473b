"""``moe-sim``: the simulator's command line, a Hydra app over ``conf/config.yaml``.

    moe-sim                                    the bundled comparison (experiment=compare)
    moe-sim policy=gate-lookahead hardware=h100-pcie cache.fraction=0.25 batch=4
    moe-sim experiment=compare trace.tokens=5000
    moe-sim --multirun policy=lru,presched cache.fraction=0.25,0.5     (joblib, in parallel)
    moe-sim --multirun hydra/launcher=slurm policy=lru,presched        (SLURM via submitit)
    moe-sim cluster=h100x8-nvswitch balance=probe model=deepseek-v3 batch=32   (expert parallel)
    moe-sim sweep collect DIR                  rebuild a sweep's sweep.csv / sweep.md
    moe-sim sweep resume DIR                   rerun only a sweep's missing and failed jobs

Arguments are Hydra overrides. One run writes summary.json, steps.parquet, events.parquet,
timeline.json and steps.png into Hydra's run folder (``out=DIR`` chooses it) and prints a table
(a sweep job writes no timeline.json or figure unless ``outputs.timeline`` / ``outputs.figures``
is true, logs per-step tables, ``log=steps``, where the config has that key and the command
line does not set it, and shares its synthetic trace with the sweep's other jobs:
``sim/trace_cache.py``);
a comparison writes compare.csv, compare.md, compare.png, summaries.json and each run's files in
runs/<label>/; a sweep writes its plan (sweep.json), one numbered folder per job plus sweep.csv
and sweep.md (always, from whatever jobs finished: missing and failed jobs are marked), and
prints the combined table (``sim/sweep.py``). Every job's config is checked before anything
runs. User errors, and launcher errors, print one line on stderr and exit with 2; a sweep with
a missing or failed job exits with 2 after writing its table.

``policy=path/to/file.yaml`` runs a policy file kept anywhere, and ``hydra.searchpath=[file://DIR]``
adds a folder whose ``policy/`` configs ``policy=NAME`` finds (:mod:`sim.cli_args`). Hydra's own
flags work as in any Hydra app: ``--cfg job|hydra|all`` (with ``--resolve``, ``--package``),
``--info [searchpath|defaults|...]``, ``--help`` (the config groups and the composed config),
``--hydra-help``; ``--version`` prints the tool's version.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from moe_offload_lab.sim.cli_args import hydra_flag, policy_file_overrides, split_flags
from moe_offload_lab.sim.run import RunConfig, batch_label, prepare, simulate
from moe_offload_lab.sim.trace_cache import FOLDER as TRACES_DIR
from moe_offload_lab.sim.trace_cache import TraceCache
from moe_offload_lab.sim.trace_cache import shared as shared_traces
from moe_offload_lab.traces.catalog import conf_dir
from moe_offload_lab.traces.errors import ConfigError, MoeLabError, run_command
from omegaconf import DictConfig, OmegaConf

from moe_offload_lab import version_line

PROG = "moe-sim"
_MULTIRUN = ("-m", "--multirun")
_TABLE_KEYS = ("model", "hardware", "policy", "capacity_slots", "fits_gpu_memory", "batch",
               "tokens", "steps", "makespan_s", "tokens_per_s", "tpot_ms_mean", "tpot_ms_p50",
               "tpot_ms_p99", "ttft_ms_mean", "hit_rate", "h2d_bytes", "stall_s",
               "prefetch_precision", "prefetch_recall", "wasted_prefetch_bytes", "nvme_reads",
               "events", "sim_wall_s")


_SKIP_DONE_ENV = "MOE_SIM_SKIP_DONE"  # set in sweep jobs by ``moe-sim sweep resume``


class _JobFailed(BaseException):  # noqa: N818 - passes through Hydra's handlers
    """A job of a single run failed with a user error (already reported)."""


def compose(overrides: Sequence[str], with_hydra: bool = False) -> DictConfig:
    """The composed config for these overrides (Hydra compose API, the merge of the same
    config groups remembered: :mod:`traces.hydra_compose`; errors -> ConfigError).
    ``with_hydra`` keeps the ``hydra`` node (and accepts Hydra's own overrides)."""
    from moe_offload_lab.traces.hydra_compose import compose_config

    return compose_config(conf_dir(), policy_file_overrides(overrides),
                          return_hydra_config=with_hydra)


def quiet_log(overrides: Sequence[str], level: str) -> list[str]:
    """``overrides`` with ``log=<level>`` added, where the config has the event-log level
    ``log`` (:mod:`sim.eventlog`) and no override sets it: a sweep job (``steps``) or a tuning
    trial (``summary``) keeps the exact step table and summary, not every event row."""
    if any(o.split("=", 1)[0].lstrip("+~") == "log" for o in overrides) or \
            "log" not in compose([]):
        return list(overrides)
    return [*overrides, f"log={level}"]


def run_config(cfg: DictConfig) -> RunConfig:
    """The composed config as a :class:`RunConfig` (``hydra`` node dropped)."""
    if "hydra" in cfg:  # Hydra's node resolves only inside Hydra's app: drop it first
        data = OmegaConf.to_container(cfg, resolve=False)
        data.pop("hydra", None)
        cfg = OmegaConf.create(data)
    try:
        return RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
    except Exception as exc:  # interpolation errors from OmegaConf
        if isinstance(exc, MoeLabError):
            raise
        raise ConfigError(str(exc).strip().splitlines()[0]) from None


def checked_run_config(overrides: Sequence[str]) -> RunConfig:
    """The :class:`RunConfig` of these overrides (one job), with every override checked to
    reach the run (:func:`sim.overrides.check_overrides`)."""
    from moe_offload_lab.sim.overrides import check_overrides

    cfg = run_config(compose(overrides))
    if not cfg.cluster:  # expert-parallel runs check their own settings (sim.cluster)
        check_overrides(overrides, cfg)
    return cfg


def check(overrides: Sequence[str]) -> list[list[str]]:
    """Compose and check every job of these overrides (sweeps expanded); returns the jobs."""
    from moe_offload_lab.sim.sweep import expand

    overrides = policy_file_overrides(overrides)
    jobs = expand(overrides)
    hydra_overrides = [o for o in overrides if o.lstrip("+~").startswith("hydra")]
    if hydra_overrides:  # Hydra's own choices (launcher...): composing once checks them
        compose([*jobs[0], *hydra_overrides], with_hydra=True)
    for job in jobs:  # with hydra.searchpath, which decides where policy=NAME is found
        where = f" (job {' '.join(job)})" if len(jobs) > 1 else ""
        try:
            _check_one(checked_run_config([*job, *hydra_overrides]))
        except MoeLabError as exc:
            raise type(exc)(f"{exc}{where}") from None
    return jobs


def output_flags(cfg: RunConfig, sweeping: bool) -> tuple[bool, bool]:
    """``(figures, timeline)``: whether a run writes its figure (steps.png / compare.png) and
    timeline.json. ``outputs.figures`` / ``outputs.timeline`` decide; null (the default) means
    yes for a single run and no for each job of a sweep, whose cost they would dominate."""
    outputs = cfg.outputs or {}
    if not isinstance(outputs, dict):
        raise ConfigError(f"outputs must be a mapping {{figures, timeline}}, got {outputs!r}")
    unknown = sorted(set(outputs) - {"figures", "timeline"})
    if unknown:
        raise ConfigError(f"unknown outputs key(s): {', '.join(unknown)} (valid: figures, "
                          f"timeline)")
    flags = []
    for key in ("figures", "timeline"):
        value = outputs.get(key)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"outputs.{key} must be true, false or null (null: single runs "
                              f"yes, sweep jobs no), got {value!r}")
        flags.append(not sweeping if value is None else value)
    return flags[0], flags[1]


def _check_one(cfg: RunConfig) -> None:
    output_flags(cfg, sweeping=False)
    if cfg.cluster:
        from moe_offload_lab.sim.cluster.hydra_run import check_cluster

        check_cluster(cfg)
        return
    if not cfg.compare:
        prepare(cfg)
        return
    from moe_offload_lab.sim.compare import run_configs

    for one in run_configs(cfg).values():
        prepare(one)


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _table(summary: dict[str, Any]) -> str:
    return "\n".join(f"{key:<24}{_number(summary.get(key))}" for key in _TABLE_KEYS)


def memory_note(summaries: list[dict[str, Any]]) -> str | None:
    """A line for runs whose weights do not fit their GPU (``fits_gpu_memory``), single-GPU or
    expert-parallel (per rank); None when all fit."""
    over = [s for s in summaries if not s.get("fits_gpu_memory", True)]
    if not over:
        return None
    worst = max(over, key=lambda s: s["gpu_memory_needed_gb"])
    what = "of weights per rank" if "ranks" in worst else "of weights and cache"
    return (f"note: {len(over)} of {len(summaries)} runs need more GPU memory than "
            f"{worst['hardware']} has (up to {worst['gpu_memory_needed_gb']:.1f} GB {what} "
            f"against {worst['gpu_memory_gb']:.1f} GB); cache.strict_memory=true refuses such "
            f"runs")


def _run_compare(run_cfg: RunConfig, out: Path, traces: TraceCache | None,
                 sweeping: bool) -> None:
    from moe_offload_lab.sim.compare import (
        headline_lines,
        run_comparison,
        text_table,
        write_comparison,
    )

    figure, _ = output_flags(run_cfg, sweeping)
    table, summaries, results = run_comparison(run_cfg, traces)
    headline = headline_lines(run_cfg, table)
    paths = write_comparison(table, summaries, results, out, headline, figure=figure)
    grid = "key" in summaries[0]  # models and batches are columns of the table
    print(f"{'' if grid else run_cfg.model['name'] + ' '}on {run_cfg.hardware['name']}, "
          f"{summaries[0]['tokens']} tokens{'' if grid else ', ' + batch_label(summaries[0])}")
    print(text_table(table))
    for line in headline:
        print(line)
    note = memory_note(summaries)
    if note:
        print(note)
    print(f"wrote {', '.join(str(p) for p in paths)}")


def _run_one(run_cfg: RunConfig, out: Path, traces: TraceCache | None,
             quiet: bool = False) -> None:
    figure, timeline = output_flags(run_cfg, sweeping=quiet)
    result = simulate(run_cfg, traces)
    paths = result.write(out, figure=figure, timeline=timeline)
    if quiet:  # a sweep job: the combined table comes at the end
        s = result.summary
        print(f"job {out.name}: {s['policy']}, {s['capacity_slots']} slots: "
              f"{_number(s['tokens_per_s'])} tokens/s, hit rate {_number(s['hit_rate'])}")
        return
    print(_table(result.summary))
    note = memory_note([result.summary])
    if note:
        print(note)
    print(f"wrote {', '.join(str(p) for p in paths)}")


def _run_cluster(run_cfg: RunConfig, out: Path, sweeping: bool) -> None:
    from moe_offload_lab.sim.cluster.hydra_run import run_cluster

    _, timeline = output_flags(run_cfg, sweeping)
    print("\n".join(run_cluster(run_cfg, out, timeline=timeline)))


def _task(cfg: DictConfig) -> None:
    """The Hydra task: one run or one comparison into Hydra's output folder. A sweep job marks
    its folder done or failed (:mod:`sim.sweep`); resuming a sweep skips jobs already done.
    Sweep jobs share their synthetic traces through the sweep folder (:mod:`sim.trace_cache`)
    and write no figure or timeline unless ``outputs`` asks (:func:`output_flags`)."""
    import os

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from moe_offload_lab.sim import sweep

    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    if sweeping:
        if os.environ.get(_SKIP_DONE_ENV) and sweep.job_state(out)[0] == sweep.OK:
            print(f"job {out.name}: already done")
            return
        sweep.start_job(out)
    traces = shared_traces(out.parent / TRACES_DIR) if sweeping else None
    try:
        run_cfg = run_config(cfg)
        if run_cfg.cluster:
            _run_cluster(run_cfg, out, sweeping)
        elif run_cfg.compare:
            _run_compare(run_cfg, out, traces, sweeping)
        else:
            _run_one(run_cfg, out, traces, quiet=sweeping)
    except MoeLabError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        if not sweeping:
            _drop_debris(out)
            raise _JobFailed from None
        sweep.fail_job(out, str(exc))
        return
    if sweeping:
        sweep.finish_job(out)


def _drop_debris(out: Path) -> None:
    """A single run failed before writing anything: remove the ``.hydra`` record Hydra wrote,
    and the run folder if that leaves it empty."""
    import shutil

    if out.is_dir() and {p.name for p in out.iterdir()} <= {".hydra"}:
        shutil.rmtree(out / ".hydra", ignore_errors=True)
        _remove_if_empty(out)


def _run_hydra(args: list[str]) -> None:
    """Run Hydra's app on ``args``; its exceptions reach the caller (no Hydra report, exit 1)."""
    import os

    import hydra

    app = hydra.main(config_path=str(conf_dir()), config_name="config", version_base=None)(_task)
    saved, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [PROG, *args]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # raise instead of printing a trace and exiting 1
    try:
        app()
    finally:
        sys.argv = saved
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


def _hydra_args(args: list[str]) -> tuple[list[str], bool, Path | None]:
    """Hydra's argv for ``args``: ``out=DIR`` becomes the run or sweep folder; a sweep folder is
    fixed here so the combined table can be read back after the launcher returns."""
    multirun = any(a in _MULTIRUN for a in args)
    out = next((a.split("=", 1)[1] for a in args if a.startswith("out=")), None)
    args = [a for a in args if not a.startswith("out=")]
    if multirun:
        sweep_dir = Path(out) if out else None
        if sweep_dir is None:
            given = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.sweep.dir=")),
                         None)
            sweep_dir = Path(given) if given else Path("outputs/sweep") / time.strftime(
                "%Y%m%d-%H%M%S")
        args = [a for a in args if not a.startswith("hydra.sweep.dir=")]
        return [*args, f"hydra.sweep.dir={sweep_dir}"], True, sweep_dir
    if out:
        args.append(f"hydra.run.dir={out}")
    elif _cluster_run(args) and not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={CLUSTER_RUN_DIR}")  # not the offloading defaults' name
    return args, False, None


CLUSTER_RUN_DIR = ("outputs/cluster/${now:%Y%m%d-%H%M%S}-${model.name}-${cluster.name}-"
                   "${hydra:runtime.choices.balance}")


def _cluster_run(args: list[str]) -> bool:
    """Whether the command line picks a cluster (an expert-parallel run)."""
    values = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("cluster=")]
    return bool(values) and values[-1].lower() not in ("null", "none", "")


def _finish_sweep(sweep_dir: Path, note: bool = True) -> int:
    """Write and print the combined table of whatever jobs finished; 2 when any job is missing
    or failed (``note``: say so on stderr, with how to rerun them). The shared traces
    (``.traces``) are removed once every job is done."""
    import shutil

    from moe_offload_lab.sim.compare import text_table
    from moe_offload_lab.sim.sweep import collect, unfinished, write

    table = collect(sweep_dir)
    if table.empty:
        raise ConfigError(f"{sweep_dir}: the sweep has no jobs")
    paths = write(table, sweep_dir)
    shown = table.drop(columns=[c for c in ("error",) if not table[c].astype(bool).any()])
    print(text_table(shown))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    bad = unfinished(table)
    if not bad:  # the shared traces serve only a resume
        shutil.rmtree(sweep_dir / TRACES_DIR, ignore_errors=True)
    if bad and note:
        failed = sorted({int(j) for j, s in zip(table["job"], table["status"], strict=True)
                         if s == "failed"})
        print(f"{PROG}: error: {len(bad)} of {table['job'].nunique()} jobs "
              f"{'failed' if len(failed) == len(bad) else 'failed or are missing'} (jobs "
              f"{_ranges(bad)}); 'moe-sim sweep resume {sweep_dir}' reruns them",
              file=sys.stderr)
    return 2 if bad else 0


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    parts, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


def _launch_sweep(hydra_args: list[str], sweep_dir: Path, existed: bool) -> int:
    """Launch a sweep with Hydra's launcher; whatever happens (a job killed, a launcher error,
    Ctrl-C), write the table of the jobs that finished. Launcher errors are one line."""
    import shutil

    try:
        with _jobs_checked():
            _run_hydra(hydra_args)
    except KeyboardInterrupt:
        _table_after_error(sweep_dir)
        raise
    except Exception as exc:  # the launcher (joblib worker died, submitit without SLURM...)
        if not existed and not any(p.is_dir() and p.name.isdigit() for p in sweep_dir.iterdir()):
            shutil.rmtree(sweep_dir, ignore_errors=True)  # nothing ran: leave nothing behind
            raise ConfigError(f"the sweep could not start ({_launcher_error(exc)})") from None
        _table_after_error(sweep_dir)
        raise ConfigError(f"the sweep stopped early ({_launcher_error(exc)}); 'moe-sim sweep "
                          f"resume {sweep_dir}' reruns the missing jobs") from None
    return _finish_sweep(sweep_dir)


@contextlib.contextmanager
def _jobs_checked() -> Iterator[None]:
    """Hydra's sweeper composes every job once more before launching them, to fail early
    (``Sweeper.validate_batch_is_legal``, 0.3 s a job, one job after the other); ``moe-sim``
    has composed and checked every job with the same overrides already (:func:`check`), so that
    second pass is skipped while the sweep launches."""
    from hydra.plugins.sweeper import Sweeper

    saved = Sweeper.validate_batch_is_legal
    Sweeper.validate_batch_is_legal = lambda self, batch: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        Sweeper.validate_batch_is_legal = saved  # type: ignore[method-assign]


def _launcher_error(exc: BaseException) -> str:
    from moe_offload_lab.traces.errors import first_line

    return f"{type(exc).__name__}: {first_line(exc)}"


def _table_after_error(sweep_dir: Path) -> None:
    with contextlib.suppress(MoeLabError):
        _finish_sweep(sweep_dir, note=False)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _sweep_command(args: list[str]) -> int:
    """``moe-sim sweep collect DIR`` / ``moe-sim sweep resume DIR [HYDRA OVERRIDES]``."""
    from moe_offload_lab.sim.sweep import read_plan

    if len(args) < 2 or args[0] not in ("collect", "resume"):
        raise ConfigError("usage: moe-sim sweep collect DIR | moe-sim sweep resume DIR "
                          "[hydra.launcher.* overrides]")
    action, sweep_dir, extra = args[0], Path(args[1]), args[2:]
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir}: no such sweep folder")
    if action == "collect":
        if extra:
            raise ConfigError(f"sweep collect takes only a folder, got {' '.join(extra)}")
        return _finish_sweep(sweep_dir)
    plan = read_plan(sweep_dir)
    if plan is None:
        raise ConfigError(f"{sweep_dir}: no sweep.json (a sweep from before plans were "
                          f"recorded, or not a sweep folder); rerun its command instead")
    bad = [a for a in extra if not a.lstrip("+~").startswith("hydra")]
    if bad:
        raise ConfigError(f"sweep resume reruns the recorded jobs; only Hydra overrides "
                          f"(e.g. hydra.launcher.n_jobs=2) may be added, got {' '.join(bad)}")
    from moe_offload_lab.sim.sweep import states

    todo = [n for n, (state, _) in states(sweep_dir).items() if state != "ok"]
    if not todo:
        print(f"every job of {sweep_dir} is done")
        return _finish_sweep(sweep_dir)
    print(f"resuming {sweep_dir}: jobs {_ranges(todo)}")
    sweep_dir = sweep_dir.resolve()
    hydra_args = [*plan["args"], *extra, f"hydra.sweep.dir={sweep_dir}",
                  f"+hydra.job.env_set.{_SKIP_DONE_ENV}=1"]
    cwd = plan.get("cwd") if Path(str(plan.get("cwd"))).is_dir() else "."
    with contextlib.chdir(cwd):  # where it started: its overrides may name relative paths
        check([a for a in hydra_args if a not in _MULTIRUN and _SKIP_DONE_ENV not in a])
        return _launch_sweep(hydra_args, sweep_dir, existed=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moe-sim``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args:
        print(version_line(PROG))
        return 0
    flags, overrides = split_flags(args)
    # plain `moe-sim` (`--cfg job` too, and `out=DIR`, which only says where): the bundled
    # comparison
    if not [o for o in overrides if not o.startswith("out=")] and "--hydra-help" not in flags:
        args = [*args, "experiment=compare"]
    if hydra_flag(args):
        return run_command(PROG, lambda: _show(args))
    return run_command(PROG, lambda: _main(args))


def _show(args: list[str]) -> int:
    """Hydra's introspection flags (--cfg, --info, --help...): Hydra answers, after the
    overrides compose (so a mistake is one line and status 2)."""
    flags, overrides = split_flags(policy_file_overrides(args))
    overrides = [o for o in overrides if not o.startswith("out=")]  # nothing is written
    if not any(f in ("-h", "--help", "--hydra-help", "-sc", "--shell-completion") for f in flags):
        compose([o for o in overrides if o not in _MULTIRUN], with_hydra=True)
    hydra_args, _, _ = _hydra_args([*overrides, *flags])  # a bare --info must not eat one
    try:
        _run_hydra(hydra_args)
    except SystemExit as exc:  # --help exits 0; Hydra's own complaints (printed) exit 1
        return 2 if exc.code not in (0, None) else 0
    return 0


def _main(args: list[str]) -> int:
    if args and args[0] == "sweep":
        return _sweep_command(args[1:])
    args = policy_file_overrides(args)
    hydra_args, multirun, sweep_dir = _hydra_args(args)
    if multirun:  # sweep jobs log per-step tables unless told otherwise
        hydra_args = quiet_log(hydra_args, "steps")
    jobs = check([a for a in hydra_args if a not in _MULTIRUN])
    _check_output_dirs(hydra_args)
    if not multirun or sweep_dir is None:
        try:
            _run_hydra(hydra_args)
        except _JobFailed:
            return 2
        return 0
    from moe_offload_lab.sim.sweep import write_plan

    existed = sweep_dir.exists()
    write_plan(sweep_dir, [a for a in hydra_args if not a.startswith("hydra.sweep.dir=")], jobs)
    return _launch_sweep(hydra_args, sweep_dir, existed)


def _check_output_dirs(hydra_args: list[str]) -> None:
    """The run or sweep folder given on the command line can be written (before Hydra starts)."""
    from moe_offload_lab.traces.atomic import check_output_folder

    for arg in hydra_args:
        key, _, value = arg.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            check_output_folder(value, "out")


if __name__ == "__main__":
    sys.exit(main())
