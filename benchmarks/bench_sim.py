"""Simulator speed, the issue's cases (trace generation excluded from the timings):

1. Mixtral-8x7B, batch 1, 10,000 decode tokens, LRU and LRU with gate lookahead (target: < 3 s);
2. Qwen3-30B-A3B, continuous batching, 200 requests of 128 decode tokens (prompts of 64-512
   tokens, chunked prefill of 256), all arriving at once, batch up to 32, LRU and gate lookahead
   (target: < 20 s).

Prints wall seconds (and the process's CPU seconds, steadier on a shared machine), simulated
decode tokens per wall second, event-log rows per second and SimPy events per second (events the
environment scheduled and processed). Everything of one
engine runs in one process, one case after the other, so the ratios between lines are comparable.

``--ref DIR`` also times another checkout of this repository (for example the commit before a
change: ``git worktree add DIR <commit>``) on the same cases, in a child process, alternating with
this checkout ``--rounds`` times (each side's best round is printed): the before/after figures of
one run of one command on a shared machine. ``--system NAME`` runs this checkout's engine under an
implementation profile (``conf/system``; default: none, the pure roofline every older engine
assumed, so both sides simulate the same thing).

This checkout runs each case on ``--engine`` (default ``auto``: the compiled engine of
:mod:`sim.compiled` where the run is eligible, which all four cases are) and, unless
``--no-python``, also on its own Python engine (``engine=python``, the reference the compiled one
must match): the line then says whether the two checksums are identical and the CPU ratio. Numba
compile time is kept out of the cases' timings and printed on its own: the kernel is loaded once
in this process before the cases run (from numba's on-disk cache when warm: ``load``), and a
child process with an empty numba cache directory times the first call that compiles it
(``cold compile``; ``--no-cold`` skips it).

    python benchmarks/bench_sim.py [--tokens 10000] [--requests 200] [--hardware rtx4090]
                                   [--system fused] [--engine auto|python|compiled]
                                   [--ref DIR [--rounds 2]] [--no-python] [--no-cold]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLICIES = ("lru", "gate-lookahead")
TARGETS = {"mixtral": 3.0, "qwen3": 20.0}


def _run(engine: Any) -> tuple[float, int, dict]:
    from moe_offload_lab.sim.metrics import summarize

    start, cpu = time.perf_counter(), time.process_time()
    result = engine.run()
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    # the link's events: a DirectLink counts those it processed; on SimPy (older engines) the
    # environment numbers every event it schedules from one counter (``Environment._eid``) and
    # the run drains the queue, so the count scheduled is the count processed
    events = getattr(engine.link, "events", None)
    if events is None:
        events = next(engine.env._eid)
    summary = summarize(result.events)
    return wall_s, events, {"rows": len(result.events), "cpu_s": cpu_s, **summary,
                            "engine": getattr(engine, "engine_used", "python"),
                            "checksum": checksum(result.events, summary)}


def checksum(events: Any, summary: dict[str, Any]) -> str:
    """A digest of the event log (every column's values, categorical columns as their names'
    codes) and of the summary: equal digests on both sides mean the simulated results are
    identical to the bit."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for name in events.columns:
        column = events[name]
        values = column.cat.codes if hasattr(column, "cat") else column
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(values.to_numpy()).tobytes())
    digest.update(json.dumps(summary, sort_keys=True, default=repr).encode())
    return digest.hexdigest()[:12]


def _engine_kwargs(system: str | None, engine: str | None = None) -> dict[str, Any]:
    """The Engine keywords of a case: the profile, and the engine where one is named (older
    checkouts timed with ``--ref`` know no ``engine`` keyword: None passes none)."""
    kwargs: dict[str, Any] = {} if engine is None else {"engine": engine}
    if not system:
        return kwargs
    from moe_offload_lab.sim.system import load_system

    return {**kwargs, "system": load_system(system)}


def warm_up(engine: str = "auto") -> float:
    """One tiny eligible run (the kernel compiled, or loaded from numba's disk cache, once per
    process); returns its wall seconds."""
    from moe_offload_lab.policies.config import build_policy
    from moe_offload_lab.sim.engine import Engine
    from moe_offload_lab.sim.hardware import load_hardware
    from moe_offload_lab.traces.synthetic import generate

    trace = generate("mixtral-8x7b", tokens=40, seed=0)
    hardware = load_hardware("rtx4090")
    engines = [Engine(trace.spec, trace, build_policy(name), hardware,
                      trace.spec.num_expert_keys // 2, batch, engine=engine)
               for name in POLICIES for batch in (1, 4)]
    start = time.perf_counter()  # the runs alone (the first loads or compiles the kernel)
    for runner in engines:
        runner.run()
    return time.perf_counter() - start


def cold_compile_s() -> float:
    """:func:`warm_up`'s seconds in a child process whose numba cache directory is empty (so
    every kernel compiles)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        done = subprocess.run([sys.executable, __file__, "--warm-up-only"], check=True,
                              capture_output=True, text=True, env=env)
    return float(done.stdout.strip().splitlines()[-1])


def mixtral_batch1(tokens: int, hardware: str, system: str | None,
                   engine: str | None = None) -> list[dict[str, Any]]:
    """Case 1: static batch 1, decode steps only."""
    from moe_offload_lab.policies.config import build_policy
    from moe_offload_lab.sim.engine import Engine
    from moe_offload_lab.sim.hardware import load_hardware
    from moe_offload_lab.sim.workload import static_batches
    from moe_offload_lab.traces.synthetic import generate

    trace = generate("mixtral-8x7b", tokens=int(tokens * 2.6), seed=0)
    schedule = static_batches(trace, 1, prefill=False)[:tokens]  # decode steps only
    hw = load_hardware(hardware)
    slots = trace.spec.num_expert_keys // 2
    out = []
    for name in POLICIES:
        runner = Engine(trace.spec, trace, build_policy(name), hw, slots, schedule=schedule,
                        **_engine_kwargs(system, engine))
        wall_s, events, s = _run(runner)
        out.append({"case": "mixtral", "policy": name, "wall_s": wall_s, "events": events,
                    "cpu_s": s["cpu_s"],
                    "decode_tokens": len(schedule), "rows": s["rows"],
                    "tokens_per_s": s["tokens_per_s"], "hit_rate": s["hit_rate"],
                    "checksum": s["checksum"], "engine": s["engine"]})
    return out


def qwen3_continuous(requests: int, hardware: str, system: str | None,
                     engine: str | None = None) -> list[dict[str, Any]]:
    """Case 2: continuous batching, everything arriving at once, batch up to 32."""
    from moe_offload_lab.policies.config import build_policy
    from moe_offload_lab.sim.engine import Engine
    from moe_offload_lab.sim.hardware import load_hardware
    from moe_offload_lab.sim.workload import ContinuousBatcher
    from moe_offload_lab.traces.format import DECODE
    from moe_offload_lab.traces.synthetic import LengthDist, SynthConfig, generate

    cfg = dataclasses.replace(
        SynthConfig.preset("qwen3-30b-a3b"), requests=requests,
        prompt_tokens=LengthDist(kind="uniform", mean=288, min=64, max=512),
        decode_tokens=LengthDist(kind="fixed", mean=128, min=128, max=128))
    trace = generate(cfg, seed=0)
    decode = int((trace.phase == DECODE).sum())
    hw = load_hardware(hardware)
    slots = trace.spec.num_expert_keys // 2
    out = []
    for name in POLICIES:
        batcher = ContinuousBatcher(trace, float("inf"), 32, chunk=256, prefill=True, seed=0)
        runner = Engine(trace.spec, trace, build_policy(name), hw, slots, batcher=batcher,
                        **_engine_kwargs(system, engine))
        wall_s, events, s = _run(runner)
        out.append({"case": "qwen3", "policy": name, "wall_s": wall_s, "events": events,
                    "cpu_s": s["cpu_s"],
                    "decode_tokens": decode, "rows": s["rows"],
                    "tokens_per_s": s["tokens_per_s"], "hit_rate": s["hit_rate"],
                    "checksum": s["checksum"], "engine": s["engine"]})
    return out


def measure(args: argparse.Namespace, system: str | None, engine: str | None = None
            ) -> list[dict[str, Any]]:
    """Both cases in this process."""
    return (mixtral_batch1(args.tokens, args.hardware, system, engine)
            + qwen3_continuous(args.requests, args.hardware, system, engine))


def _line(label: str, r: dict[str, Any]) -> str:
    target = TARGETS[r["case"]]
    wall = r["wall_s"]
    verdict = "ok" if wall < target else "MISSED"
    return (f"  {label:<6} {r['policy']:<15} wall {wall:6.2f} s ({verdict}, target {target:g} s)"
            f" cpu {r['cpu_s']:6.2f} s"
            f"  {r['decode_tokens'] / wall:>8,.0f} decode tok/s  {r['events'] / wall:>9,.0f} "
            f"link events/s  {r['rows'] / wall:>9,.0f} log rows/s  | simulated "
            f"{r['tokens_per_s']:7.2f} tok/s, hit {r['hit_rate']:.3f}, checksum {r['checksum']}"
            f" [{r.get('engine', 'python')}]")


def _versus(before: dict[str, Any], after: dict[str, Any]) -> str:
    same = "identical" if before["checksum"] == after["checksum"] else "DIFFERENT"
    return (f"  ({before['wall_s'] / after['wall_s']:.2f}x wall, "
            f"{before['cpu_s'] / after['cpu_s']:.2f}x cpu; results {same})")


def _child(ref: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The cases timed on the checkout ``ref``, in a child process (printed as JSON)."""
    cmd = [sys.executable, __file__, "--child", str(ref), "--tokens", str(args.tokens),
           "--requests", str(args.requests), "--hardware", args.hardware]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=10_000, help="Mixtral decode tokens")
    parser.add_argument("--requests", type=int, default=200, help="Qwen3 requests")
    parser.add_argument("--hardware", default="rtx4090")
    parser.add_argument("--system", default=None,
                        help="implementation profile of this checkout's engine (default: none)")
    parser.add_argument("--engine", default="auto", choices=("auto", "python", "compiled"),
                        help="this checkout's engine (default auto: compiled where eligible)")
    parser.add_argument("--ref", type=Path, default=None,
                        help="another checkout to time on the same cases (before/after)")
    parser.add_argument("--rounds", type=int, default=1, help="alternations with --ref")
    parser.add_argument("--no-python", action="store_true",
                        help="skip this checkout's Python engine (the compiled one's reference)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold compile timing")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warm-up-only", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    """Run both cases (and the reference checkout's, with ``--ref``); print one line each."""
    args = _parse()
    if args.warm_up_only:  # a child timing the kernel's compilation (empty numba cache)
        print(warm_up())
        return
    if args.child is not None:  # a child timing the reference checkout
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from refcode import use_checkout

        use_checkout(args.child)
        print(json.dumps(measure(args, None)))
        return
    load_s = warm_up(args.engine) if args.engine != "python" else 0.0
    sides: dict[str, list[list[dict[str, Any]]]] = {"before": [], "after": [], "python": []}
    for _ in range(max(1, args.rounds) if args.ref else 1):
        if args.ref is not None:
            sides["before"].append(_child(args.ref, args))
        sides["after"].append(measure(args, args.system, args.engine))
        if not args.no_python and args.engine != "python":
            sides["python"].append(measure(args, args.system, "python"))
    print(f"Mixtral-8x7B, batch 1, {args.tokens} decode steps, cache at half; Qwen3-30B-A3B, "
          f"continuous batching, {args.requests} requests x 128 decode tokens, batch <= 32; "
          f"{args.hardware}; this checkout's system profile: {args.system or 'none (roofline)'}"
          f"; engine={args.engine}"
          + (f"; best of {len(sides['after'])} alternating rounds" if args.ref else ""))
    if args.engine != "python":
        cold = "" if args.no_cold else f"; cold compile (empty numba cache, a child process): " \
                                        f"{cold_compile_s():.1f} s"
        print(f"numba: kernel load in this process before the cases (warm: from the disk "
              f"cache) {load_s:.2f} s wall, not in the figures below{cold}")
    best = {side: [min(rounds, key=lambda rs, i=i: rs[i]["wall_s"])[i]
                   for i in range(len(rounds[0]))] if rounds else []
            for side, rounds in sides.items()}
    for i, after in enumerate(best["after"]):
        if best["before"]:
            print(_line("before", best["before"][i]))
        if best["python"]:
            print(_line("python", best["python"][i]))
        line = _line("after", after)
        if best["before"]:
            line += _versus(best["before"][i], after)
        if best["python"]:
            line += " vs this checkout's Python engine:" + _versus(best["python"][i], after)
        print(line)
    if args.ref is not None and any(b["checksum"] != a["checksum"]
                                    for b, a in zip(best["before"], best["after"], strict=True)):
        print(_why_different(args.ref))


COSTS = Path("conf") / "decision_costs" / "default.yaml"  # the measured decision-cost table


def _why_different(ref: Path) -> str:
    """A known cause of different results against an older checkout: its decision-cost table
    (every policy call's simulated time) is not this checkout's."""
    ours = Path(__file__).resolve().parent.parent / COSTS
    theirs = ref / COSTS
    if not theirs.is_file() or not ours.is_file():
        return "results differ: one side has no decision-cost table (a policy's decisions cost " \
               "no simulated time there)"
    if theirs.read_bytes() != ours.read_bytes():
        return (f"results differ: {COSTS} differs between the checkouts, so every decision's "
                f"simulated time does; run the reference with this checkout's table (a copy of "
                f"it with the file replaced) to compare the engines' results")
    return "results differ and the decision-cost tables are equal: the engines disagree"


if __name__ == "__main__":
    main()
