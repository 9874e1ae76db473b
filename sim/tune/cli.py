"""``moe-tune``: Optuna tuning of policy and cache parameters through the simulator.

    moe-tune run default --trials 50                       tune conf/tune/default.yaml
    moe-tune run pareto --trials 80 --workers 2            latency vs cache bytes, 2 processes
    moe-tune run my-space.yaml --study s1 --storage journal:tune.log --objective tpot_ms_p99
    moe-tune show --study default                          the trials table
    moe-tune best --study default                          best trial (Pareto front if multi)
    moe-tune export --study default [--trial N] [--name tuned-default] [--dir conf/policy]

``--trials`` is the study's total: rerunning after Ctrl-C (which stops after the running trial)
runs only the missing trials. The storage defaults to ``<--out>/<study>/study.db`` (SQLite);
``--storage`` takes ``journal:PATH`` or an RDB URL. User errors print one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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
    p.add_argument("--study", help="study name (run: default the space's name)")
    p.add_argument("--storage", help="journal:PATH or an RDB URL (default: SQLite in --out)")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder of the default storages")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line(PROG))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run (or resume) a study")
    run.add_argument("space", help="a space in conf/tune (name) or a YAML path")
    run.add_argument("--trials", type=int, default=50, help="total finished trials wanted")
    run.add_argument("--objective", help="e.g. tpot_ms_p99 or tpot_ms_mean,cache_bytes")
    run.add_argument("--workers", type=int, default=1, help="local worker processes")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--no-progress", action="store_true")
    _common(run)
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


def _cmd_run(args: argparse.Namespace) -> int:
    from moe_offload_lab.sim.tune.objectives import parse_objective
    from moe_offload_lab.sim.tune.space import check_space, load_space
    from moe_offload_lab.sim.tune.study import finished, open_study, run_parallel, storage_spec

    if args.trials < 1:
        raise _UsageError(f"--trials must be at least 1, got {args.trials}")
    objective = parse_objective(args.objective) if args.objective else None
    space = load_space(args.space, objective)
    check_space(space)
    name = args.study or space.name
    spec = storage_spec(args.storage, name, args.out)
    done = run_parallel(space, name, spec, args.trials, args.workers, args.seed,
                        progress=not args.no_progress)
    study = open_study(spec, name)
    count = finished(study)
    print(f"study {name} ({spec}): {count} finished trials")
    _print_best(study)
    if not done:
        print(f"{PROG}: interrupted with {count} of {args.trials} trials; rerun the same "
              f"command to continue", file=sys.stderr)
        return 130
    return 0


def _open(args: argparse.Namespace):  # noqa: ANN202
    from moe_offload_lab.sim.tune.study import open_study, storage_spec

    if not args.study:
        raise _UsageError("--study is required")
    return open_study(storage_spec(args.storage, args.study, args.out), args.study)


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
    from moe_offload_lab.traces.catalog import conf_dir

    study = _open(args)
    trial = pick_trial(study, args.trial)
    policy_dir = Path(args.dir) if args.dir else conf_dir() / "policy"
    path, command = export_trial(study, trial, args.name or f"tuned-{args.study}", policy_dir,
                                 args.force)
    print(f"wrote {path} (trial {trial.number})")
    print(command)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moe-tune``; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(args_list)
        return {"run": _cmd_run, "show": _cmd_show, "best": _cmd_best,
                "export": _cmd_export}[args.command](args)
    except (_UsageError, MoeLabError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse's --help
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished trials are kept, rerun to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
