"""``moe-tune``: Optuna tuning of policy and cache parameters through the simulator.

    moe-tune run default --trials 50                       tune conf/tune/default.yaml
    moe-tune run pareto --trials 80 --workers 2            latency vs cache bytes, 2 processes
    moe-tune run my-space.yaml --study s1 --storage journal:tune.log --objective tpot_ms_p99
    moe-tune run default --storage postgresql://me:pw@db/tune --schema me   a shared PostgreSQL
    moe-tune slurm default --tasks 16 --trials 200 --storage postgresql://me@db/tune [--submit]
    moe-tune show [--study NAME]                           the trials table (no NAME: studies)
    moe-tune best --study NAME                             best trial (Pareto front if multi)
    moe-tune export --study NAME [--trial N] [--name tuned-x] [--dir conf/policy]

The study's name defaults to ``<space>.<objective>.<user>`` (``--study-from-space``: the space's
name alone, as before). ``--trials`` is the study's total: rerunning after Ctrl-C (which stops
after the running trial) or a killed worker (whose trial is failed at once) runs only the
missing trials. The storage defaults to ``$MOE_TUNE_STORAGE``, else ``<--out>/<study>/study.db``
(SQLite); ``--storage`` takes ``journal:PATH`` or an RDB URL; passwords are never printed.
``show``, ``best`` and ``export`` only read. User errors print one line, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moe_offload_lab.sim.tune.slurm import STORAGE_ENV
from moe_offload_lab.sim.tune.storage import mask, scrub
from moe_offload_lab.traces.errors import MoeLabError

from moe_offload_lab import version_line

PROG = "moe-tune"
DEFAULT_OUT = "outputs/tune"


class _UsageError(Exception):
    """argparse's complaint, reported like any other user error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", help="study name (run: default <space>.<objective>.<user>)")
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV) or None,
                   help=f"journal:PATH or an RDB URL (default: ${STORAGE_ENV}, else SQLite in "
                        f"--out)")
    p.add_argument("--schema", help="PostgreSQL schema of the study's tables (created if "
                                    "missing), for users who may not create tables in public")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder of the default storages")


def _space_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a space in conf/tune (name) or a YAML path")
    p.add_argument("--trials", type=int, default=50, help="total finished trials wanted")
    p.add_argument("--objective", help="e.g. tpot_ms_p99 or tpot_ms_mean,cache_bytes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--study-from-space", action="store_true",
                   help="name the study after the space alone (the old default)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line(PROG))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run (or resume) a study")
    _space_args(run)
    run.add_argument("--workers", type=int, default=1, help="local worker processes")
    run.add_argument("--no-progress", action="store_true")
    _common(run)
    slurm = sub.add_parser("slurm", help="run a study's trials as a SLURM job array")
    _space_args(slurm)
    slurm.add_argument("--tasks", type=int, required=True, help="array tasks (workers)")
    slurm.add_argument("--parallel", type=int, help="tasks running at once (default: all)")
    slurm.add_argument("--time-min", type=int, default=60, help="time limit per task")
    slurm.add_argument("--cpus-per-task", type=int, default=1)
    slurm.add_argument("--mem-gb", type=float, default=4.0, help="memory per task")
    slurm.add_argument("--partition")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                       help="another #SBATCH option, e.g. --sbatch=--account=lab (repeatable)")
    slurm.add_argument("--dir", help="folder of the script (default: <--out>/<study>/slurm)")
    slurm.add_argument("--submit", action="store_true", help="run sbatch on the script")
    _common(slurm)
    show = sub.add_parser("show", help="the trials table")
    _common(show)
    best = sub.add_parser("best", help="the best trial, or the Pareto front")
    _common(best)
    export = sub.add_parser("export", help="write a trial as a policy config")
    _common(export)
    export.add_argument("--trial", type=int, help="trial number (default: the best)")
    export.add_argument("--name", help="policy name (default: tuned-<study>)")
    export.add_argument("--dir", help="policy folder (default: conf/policy)")
    export.add_argument("--force", action="store_true", help="replace an existing file")
    return parser


def _study_and_space(args: argparse.Namespace) -> tuple[Any, str, str]:
    """The checked space, the study name and the storage of ``run`` / ``slurm``."""
    from moe_offload_lab.sim.tune.objectives import parse_objective
    from moe_offload_lab.sim.tune.space import check_space, load_space
    from moe_offload_lab.sim.tune.study import default_study_name, storage_spec

    if args.trials < 1:
        raise _UsageError(f"--trials must be at least 1, got {args.trials}")
    objective = parse_objective(args.objective) if args.objective else None
    space = load_space(args.space, objective)
    if args.study and args.study_from_space:
        raise _UsageError("--study and --study-from-space exclude each other")
    name = args.study or (space.name if args.study_from_space else default_study_name(space))
    _check_name(name)
    check_space(space)
    return space, name, storage_spec(args.storage, name, args.out)


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or "\n" in name:
        raise _UsageError(f"--study must be a plain name (no '/', not starting with '.'), "
                          f"got {name!r}")


def _cmd_run(args: argparse.Namespace) -> int:
    from moe_offload_lab.sim.tune.study import finished, open_study, run_parallel

    space, name, spec = _study_and_space(args)
    print(f"study {name} in {mask(spec)}", file=sys.stderr)
    done = run_parallel(space, name, spec, args.trials, args.workers, args.seed,
                        progress=not args.no_progress, schema=args.schema)
    study = open_study(spec, name, schema=args.schema)
    count = finished(study)
    print(f"study {name} ({mask(spec)}): {count} finished trials")
    _print_best(study)
    if not done:
        print(f"{PROG}: interrupted with {count} of {args.trials} trials; rerun the same "
              f"command to continue", file=sys.stderr)
        return 130
    return 0


def _cmd_slurm(args: argparse.Namespace) -> int:
    from moe_offload_lab.sim.tune.slurm import ArrayJob, shared_storage, submit, write_script
    from moe_offload_lab.sim.tune.space import space_dir
    from moe_offload_lab.sim.tune.study import open_study

    if not args.storage:
        raise _UsageError(f"moe-tune slurm needs --storage (or ${STORAGE_ENV}): a storage "
                          f"every node shares, postgresql://... or journal:PATH")
    space, name, spec = _study_and_space(args)
    shared_storage(spec)  # refuses SQLite before anything is created
    open_study(spec, name, space, args.seed, schema=args.schema)  # created and checked here
    job = ArrayJob(args.tasks, args.parallel, args.time_min, args.cpus_per_task, args.mem_gb,
                   args.partition, tuple(args.sbatch))
    folder = Path(args.dir) if args.dir else Path(args.out) / name / "slurm"
    space_file = Path(args.space) if Path(args.space).suffix else space_dir() / f"{args.space}.yaml"
    script, storage = write_script(space_file, name, spec, args.trials, job, folder,
                                   args.seed, args.schema)
    print(f"wrote {script}: {args.tasks} tasks of study {name} ({args.trials} trials) on "
          f"{mask(storage)}")
    if storage.startswith("$"):
        print(f"the storage URL holds a password, so the script reads it from ${STORAGE_ENV}: "
              f"export it in the shell that runs sbatch")
    if args.submit:
        print(submit(script))
    else:
        print(f"submit with: sbatch {script}")
    return 0


def _open(args: argparse.Namespace):  # noqa: ANN202
    from moe_offload_lab.sim.tune.study import open_study, storage_spec

    if not args.study:
        raise _UsageError(f"--study is required; {_known_studies(args)}")
    return open_study(storage_spec(args.storage, args.study, args.out), args.study,
                      schema=args.schema)


def _known_studies(args: argparse.Namespace) -> str:
    """The studies one could name: those of --storage, else the folders of --out."""
    if args.storage:
        import optuna
        from moe_offload_lab.sim.tune.storage import open_storage

        try:
            storage = open_storage(args.storage, create=False, schema=args.schema)
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        except Exception:  # noqa: BLE001 - a hint only
            return f"{mask(args.storage)} cannot be listed"
        return f"studies in {mask(args.storage)}: {', '.join(names) or 'none'}"
    out = Path(args.out)
    names = sorted(p.parent.name for p in out.glob("*/study.db"))
    return f"studies in {out}: {', '.join(names) or 'none'}"


def _print_best(study) -> None:  # noqa: ANN001
    from optuna.trial import TrialState

    objectives = study.user_attrs.get("space", {}).get("objective", ["value"])
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        print("no complete trials yet")
        return
    trials = [study.best_trial] if len(study.directions) == 1 else sorted(
        study.best_trials, key=lambda t: t.values[0])
    title = "best trial" if len(trials) == 1 and len(objectives) == 1 else "Pareto front"
    print(f"{title}:")
    for t in trials:
        values = ", ".join(f"{o}={v:.6g}" for o, v in zip(objectives, t.values, strict=False))
        print(f"  trial {t.number}: {values}  {' '.join(t.user_attrs.get('overrides', []))}")


def _cmd_show(args: argparse.Namespace) -> int:
    import pandas as pd

    if not args.study:  # which studies there are
        print(_known_studies(args))
        return 0
    study = _open(args)
    frame = study.trials_dataframe(attrs=("number", "state", "values", "params", "duration"))
    if frame.empty:
        print("no trials yet")
        return 0
    frame.columns = [c.replace("params_", "") for c in frame.columns]
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(frame.to_string(index=False))
    return 0


def _cmd_best(args: argparse.Namespace) -> int:
    _print_best(_open(args))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from moe_offload_lab.sim.tune.export import export_trial, pick_trial
    from moe_offload_lab.traces.atomic import check_output_folder
    from moe_offload_lab.traces.catalog import conf_dir

    policy_dir = Path(args.dir) if args.dir else conf_dir() / "policy"
    check_output_folder(policy_dir, "--dir")
    study = _open(args)
    trial = pick_trial(study, args.trial)
    path, command = export_trial(study, trial, args.name or f"tuned-{args.study}", policy_dir,
                                 args.force)
    print(f"wrote {path} (trial {trial.number})")
    print(command)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moe-tune``; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        args = _parser().parse_args(args_list)
        return {"run": _cmd_run, "slurm": _cmd_slurm, "show": _cmd_show, "best": _cmd_best,
                "export": _cmd_export}[args.command](args)
    except (_UsageError, MoeLabError) as exc:
        storage = getattr(args, "storage", None)
        text = scrub(str(exc), storage) if storage else str(exc)
        print(f"{PROG}: error: {text}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse's --help
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished trials are kept, rerun to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
