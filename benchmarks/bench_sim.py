"""Simulator speed: Mixtral-8x7B, batch 1, 10,000 decode tokens, LRU and gate lookahead.

Prints the simulation's wall time (trace generation excluded) and event-log rows per second
(about 2.3 SimPy events are fired per MoE layer; the log holds about 4.8 rows per layer).
Target: under 3 s per run. ``python benchmarks/bench_sim.py [--tokens N] [--hardware NAME]``.
"""

from __future__ import annotations

import argparse
import time

from policies.config import build_policy
from sim.engine import Engine
from sim.hardware import load_hardware
from sim.metrics import summarize
from sim.workload import static_batches
from traces.synthetic import generate


def main() -> None:
    """Run the benchmark and print one line per policy."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=10_000, help="decode tokens to simulate")
    parser.add_argument("--hardware", default="rtx4090")
    parser.add_argument("--fraction", type=float, default=0.5, help="cache fraction")
    args = parser.parse_args()
    t0 = time.perf_counter()
    trace = generate("mixtral-8x7b", tokens=int(args.tokens * 2.6), seed=0)
    schedule = static_batches(trace, 1, prefill=False)[: args.tokens]  # decode steps only
    print(f"trace: {trace.num_tokens} tokens generated in {time.perf_counter() - t0:.2f} s; "
          f"simulating {len(schedule)} decode steps")
    hardware = load_hardware(args.hardware)
    slots = round(args.fraction * trace.spec.num_expert_keys)
    for name in ("lru", "gate-lookahead"):
        engine = Engine(trace.spec, trace, build_policy(name), hardware, slots, schedule=schedule)
        start = time.perf_counter()
        result = engine.run()
        wall_s = time.perf_counter() - start
        s = summarize(result.events)
        print(f"{name:<16} wall {wall_s:6.2f} s  log rows {len(result.events):>9,d}  "
              f"{len(result.events) / wall_s:>10,.0f} rows/s  simulated {s['makespan_s']:8.2f} s"
              f"  {s['tokens_per_s']:6.2f} tok/s  hit {s['hit_rate']:.3f}  "
              f"stall {s['stall_s']:.2f} s")


if __name__ == "__main__":
    main()
