"""Sweep throughput and ``moe-tune``'s start, this checkout against another in one run.

1. A 16-job ``moe-sim --multirun`` (policies lru, lfu, gate-lookahead, mixtral-offloading x
   cache.fraction 0.25, 0.375, 0.5, 0.625; Mixtral-8x7B on an RTX 4090, 2,000-token synthetic
   traces; the joblib launcher, as many workers as cores) run as a user runs it, in a fresh
   process: prints simulations per minute, wall clock from the command's start to its exit
   (target: at least 60 per minute on 2 cores), and whether both sides' tables agree (every
   metric but ``sim_wall_s``).
2. ``moe-tune run default --trials 1`` in a fresh process: prints the time from the command's
   start to the first trial's start (Optuna's ``datetime_start`` of trial 0), the space check
   and everything before it included.

``--ref DIR`` also times another checkout of this repository (e.g. ``git worktree add --detach
DIR c062ae7``, the code before issue 19) on the same sweep and the same tuning start, with
``--rounds`` alternations (each side's best round is printed, and the ratio). The other
checkout runs with this environment's packages: a ``sitecustomize`` on ``PYTHONPATH`` maps
``moe_offload_lab`` to it in the command's process and in every launcher worker it starts
(:mod:`refcode`). On a shared machine, quote the ratio, measured in one run.

    python benchmarks/bench_sweep.py [--ref DIR] [--rounds 2] [--jobs 16] [--tokens 2000]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLICIES = ("lru", "lfu", "gate-lookahead", "mixtral-offloading")
FRACTIONS = ("0.25", "0.375", "0.5", "0.625", "0.75", "0.875")
TARGET_PER_MIN = 60.0
_SITE = """import sys
sys.path.insert(0, {bench!r})
from refcode import use_checkout
use_checkout({ref!r})
"""


def _env(ref: Path | None, scratch: Path) -> dict[str, str]:
    """The environment of a timed command: this checkout's, or one that maps the package to
    ``ref`` in every Python process it starts."""
    env = dict(os.environ)
    env.pop("MOE_TUNE_STORAGE", None)
    if ref is None:
        return env
    site = scratch / "ref-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITE.format(
        bench=str(Path(__file__).resolve().parent), ref=str(ref.resolve())))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    return env


def sweep_args(jobs: int, tokens: int) -> list[str]:
    """The sweep's overrides: policies x cache fractions, ``jobs`` of them."""
    per_policy = max(1, jobs // len(POLICIES))
    if per_policy > len(FRACTIONS):
        raise SystemExit(f"--jobs at most {len(POLICIES) * len(FRACTIONS)}")
    return [f"policy={','.join(POLICIES)}", f"cache.fraction={','.join(FRACTIONS[:per_policy])}",
            "model=mixtral-8x7b", "hardware=rtx4090", f"trace.tokens={tokens}"]


def time_sweep(ref: Path | None, scratch: Path, args: list[str], tag: str
               ) -> tuple[float, list[dict[str, str]]]:
    """Wall seconds of one ``moe-sim --multirun``, and its table's rows."""
    out = scratch / f"sweep-{tag}"
    cmd = [sys.executable, "-m", "moe_offload_lab.sim.cli", "--multirun", *args, f"out={out}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=_env(ref, scratch), capture_output=True, text=True,
                          cwd=scratch)
    wall_s = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tag}: moe-sim exited {done.returncode}:\n{done.stderr[-2000:]}")
    with open(out / "sweep.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return wall_s, rows


def time_tune(ref: Path | None, scratch: Path, tag: str) -> float:
    """Seconds from a ``moe-tune run default --trials 1`` command's start to its first trial's
    start."""
    import optuna

    out = scratch / f"tune-{tag}"
    cmd = [sys.executable, "-m", "moe_offload_lab.sim.tune.cli", "run", "default", "--trials",
           "1", "--study", "bench", "--no-progress", "--out", str(out)]
    started = dt.datetime.now()
    done = subprocess.run(cmd, env=_env(ref, scratch), capture_output=True, text=True,
                          cwd=scratch)
    if done.returncode != 0:
        raise SystemExit(f"{tag}: moe-tune exited {done.returncode}:\n{done.stderr[-2000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{out / 'bench' / 'study.db'}")
    first = min(t.datetime_start for t in study.get_trials(deepcopy=False))
    return (first - started).total_seconds()


def _differences(a: list[dict[str, str]], b: list[dict[str, str]]) -> dict[str, float]:
    """Columns two sweep tables disagree on (both have them; ``sim_wall_s`` and ``log`` aside),
    with the largest relative difference (inf: not numbers). Numbers within 1e-9 relative
    count as equal (``log=steps`` sums ``stall_s`` fold by fold, so its last bits may differ:
    ``sim.eventlog``); empty cells (NaN) equal empty cells."""
    if len(a) != len(b):
        return {"rows": float("inf")}
    worst: dict[str, float] = {}
    for x, y in zip(a, b, strict=True):
        for key in sorted((set(x) & set(y)) - {"sim_wall_s", "log"}):
            if x[key] == y[key]:
                continue
            try:
                u, v = float(x[key]), float(y[key])
                rel = abs(u - v) / max(abs(u), abs(v))
            except (ValueError, ZeroDivisionError):
                rel = float("inf")
            if rel > 1e-9:
                worst[key] = max(worst.get(key, 0.0), rel)
    return worst


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, default=None,
                        help="another checkout to time the same way (before/after)")
    parser.add_argument("--rounds", type=int, default=1, help="alternations with --ref")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--no-tune", action="store_true", help="skip the moe-tune start")
    args = parser.parse_args()
    sides = {"before": args.ref, "after": None} if args.ref else {"after": None}
    overrides = sweep_args(args.jobs, args.tokens)
    jobs = len(POLICIES) * max(1, args.jobs // len(POLICIES))
    sweeps: dict[str, list[float]] = {s: [] for s in sides}
    tunes: dict[str, list[float]] = {s: [] for s in sides}
    tables: dict[str, list[dict[str, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        scratch = Path(tmp)
        for r in range(max(1, args.rounds)):
            for side, ref in sides.items():
                wall_s, tables[side] = time_sweep(ref, scratch, overrides, f"{side}{r}")
                sweeps[side].append(wall_s)
                if not args.no_tune:
                    tunes[side].append(time_tune(ref, scratch, f"{side}{r}"))
    print(f"moe-sim --multirun {' '.join(overrides)}: {jobs} jobs, joblib launcher, "
          f"{os.cpu_count()} cores (best of {max(1, args.rounds)} round(s); a shared machine: "
          f"quote the ratio)")
    for side in sides:
        best = min(sweeps[side])
        rate = jobs / best * 60
        verdict = "ok" if rate >= TARGET_PER_MIN else "MISSED"
        print(f"  {side:<6} {best:6.1f} s wall: {rate:6.1f} simulations/min ({verdict}, target "
              f">= {TARGET_PER_MIN:g})")
    if args.ref:
        diff = _differences(tables["before"], tables["after"])
        print(f"  after/before: {min(sweeps['before']) / min(sweeps['after']):.2f}x simulations "
              f"per minute; results identical (sim_wall_s aside): "
              + ("yes" if not diff else "NO, " + ", ".join(
                  f"{k} up to {v:.2g} relative" for k, v in diff.items())
                 + " (a changed model or cost table changes results; see the commits between)"))
    if not args.no_tune:
        print("moe-tune run default --trials 1: command start to first trial start")
        for side in sides:
            print(f"  {side:<6} {min(tunes[side]):6.1f} s")
        if args.ref:
            print(f"  before/after: {min(tunes['before']) / min(tunes['after']):.2f}x faster")


if __name__ == "__main__":
    main()
