"""Simulator speed, the issue's two cases (trace generation excluded from the timings):

1. Mixtral-8x7B, batch 1, 10,000 decode tokens, LRU and LRU with gate lookahead (target: < 3 s);
2. Qwen3-30B-A3B, continuous batching, 200 requests of 128 decode tokens (prompts of 64-512
   tokens, chunked prefill of 256), all arriving at once, batch up to 32, LRU and gate lookahead
   (target: < 20 s).

Prints wall seconds, simulated decode tokens per wall second, event-log rows per second and
SimPy events per second (events the environment scheduled and processed). Everything runs in one
process, one case after the other, so the ratios between lines are comparable.

    python benchmarks/bench_sim.py [--tokens 10000] [--requests 200] [--hardware rtx4090]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.hardware import load_hardware
from moe_offload_lab.sim.metrics import summarize
from moe_offload_lab.sim.workload import ContinuousBatcher, static_batches
from moe_offload_lab.traces.format import DECODE
from moe_offload_lab.traces.synthetic import LengthDist, SynthConfig, generate

POLICIES = ("lru", "gate-lookahead")


def _run(engine: Engine) -> tuple[float, int, dict]:
    start = time.perf_counter()
    result = engine.run()
    wall_s = time.perf_counter() - start
    # SimPy numbers every event it schedules from one counter (``Environment._eid``); the run
    # drains the queue, so the count scheduled is the count processed. Read once, after the
    # timing: counting in ``step`` would slow every event down.
    events = next(engine.env._eid)
    return wall_s, events, {"rows": len(result.events), **summarize(result.events)}


def _line(name: str, wall_s: float, decode_tokens: int, events: int, s: dict, target: float
          ) -> str:
    verdict = "ok" if wall_s < target else "MISSED"
    return (f"  {name:<15} wall {wall_s:6.2f} s ({verdict}, target {target:g} s)  "
            f"{decode_tokens / wall_s:>8,.0f} decode tok/s  {events / wall_s:>9,.0f} SimPy "
            f"events/s  {s['rows'] / wall_s:>9,.0f} log rows/s  | simulated "
            f"{s['tokens_per_s']:7.2f} tok/s, hit {s['hit_rate']:.3f}")


def mixtral_batch1(tokens: int, hardware: str) -> None:
    """Case 1: static batch 1, decode steps only."""
    t0 = time.perf_counter()
    trace = generate("mixtral-8x7b", tokens=int(tokens * 2.6), seed=0)
    schedule = static_batches(trace, 1, prefill=False)[:tokens]  # decode steps only
    print(f"Mixtral-8x7B, batch 1, {len(schedule)} decode steps, cache at half "
          f"(trace made in {time.perf_counter() - t0:.1f} s)")
    hw = load_hardware(hardware)
    slots = trace.spec.num_expert_keys // 2
    for name in POLICIES:
        engine = Engine(trace.spec, trace, build_policy(name), hw, slots, schedule=schedule)
        wall_s, events, s = _run(engine)
        print(_line(name, wall_s, len(schedule), events, s, 3.0))


def qwen3_continuous(requests: int, hardware: str) -> None:
    """Case 2: continuous batching, everything arriving at once, batch up to 32."""
    t0 = time.perf_counter()
    cfg = dataclasses.replace(
        SynthConfig.preset("qwen3-30b-a3b"), requests=requests,
        prompt_tokens=LengthDist(kind="uniform", mean=288, min=64, max=512),
        decode_tokens=LengthDist(kind="fixed", mean=128, min=128, max=128))
    trace = generate(cfg, seed=0)
    decode = int((trace.phase == DECODE).sum())
    print(f"Qwen3-30B-A3B, continuous batching, {requests} requests x 128 decode tokens "
          f"({trace.num_tokens} tokens), batch <= 32 (trace made in "
          f"{time.perf_counter() - t0:.1f} s)")
    hw = load_hardware(hardware)
    slots = trace.spec.num_expert_keys // 2
    for name in POLICIES:
        batcher = ContinuousBatcher(trace, float("inf"), 32, chunk=256, prefill=True, seed=0)
        engine = Engine(trace.spec, trace, build_policy(name), hw, slots, batcher=batcher)
        wall_s, events, s = _run(engine)
        assert decode == int(np.sum([r.size for r in engine.schedule])) - (trace.num_tokens
                                                                           - decode)
        print(_line(name, wall_s, decode, events, s, 20.0))


def main() -> None:
    """Run both cases and print one line per policy."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=10_000, help="Mixtral decode tokens")
    parser.add_argument("--requests", type=int, default=200, help="Qwen3 requests")
    parser.add_argument("--hardware", default="rtx4090")
    args = parser.parse_args()
    mixtral_batch1(args.tokens, args.hardware)
    qwen3_continuous(args.requests, args.hardware)


if __name__ == "__main__":
    main()
