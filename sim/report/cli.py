"""``moe-report``: figures and a markdown summary of a simulator or tuning output folder.

    moe-report outputs/sweep/20250101-120000       a moe-sim --multirun sweep
    moe-report outputs/compare/...                  a comparison (compare.csv, summaries.json)
    moe-report outputs/sim/...                      a single run
    moe-report outputs/tune/pareto                  a moe-tune study folder (study.db)
    moe-report --storage journal:out/tune.log --study s1 -o out/s1-report
    moe-report outputs/sweep/... --timeline-run "prescope, cache.fraction=0.25"

Writes PNG figures, their tables as CSV and ``report.md`` into ``<folder>/report/`` (``-o``
chooses another folder), all at once: on an error nothing is written. User errors (a missing
folder, nothing recognisable, an empty sweep) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from moe_offload_lab.traces.errors import ConfigError, run_cli

from moe_offload_lab import version_line

PROG = "moe-report"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", help="a sweep, comparison, run or study folder")
    parser.add_argument("-o", "--out", help="report folder (default: <folder>/report)")
    parser.add_argument("--storage", help="Optuna storage of a study (journal:PATH or RDB URL)")
    parser.add_argument("--study", help="study name in --storage")
    parser.add_argument("--timeline-steps", type=int, default=2,
                        help="steps in the timeline excerpt (default 2)")
    parser.add_argument("--timeline-run", metavar="LABEL",
                        help="the run the timeline excerpt draws: its label in the report, or a "
                             "unique part of it (default: the most eventful run)")
    parser.add_argument("--version", action="version", version=version_line(PROG))
    return parser


def _run(args: list[str]) -> int:
    from moe_offload_lab.sim.report.build import write_report

    ns = _parser().parse_args(args)
    path = write_report(ns.folder, ns.out, storage=ns.storage, study=ns.study,
                        timeline_steps=ns.timeline_steps, timeline_run=ns.timeline_run)
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moe-report``; returns the exit status."""
    return run_cli(PROG, __doc__, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
