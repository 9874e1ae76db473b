"""Trace pipeline benchmark: generate, save, load and analyse a Mixtral-shaped trace.

    python benchmarks/bench_traces.py [--tokens 1000000] [--preset mixtral-8x7b]

Targets on a 2-core machine for 1,000,000 tokens: generate < 15 s, load < 2 s, full stats < 20 s.
The first run also compiles the numba kernels (cached afterwards); the script warms them up on a
small trace first so the timings show steady-state cost, and prints the warm-up time separately.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from moe_offload_lab.traces.analysis.report import compute_stats
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.synthetic import generate


def _timed(label: str, fn, target_s: float | None = None):
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    verdict = (
        ""
        if target_s is None
        else f"  target < {target_s:g} s  {'OK' if elapsed < target_s else 'MISSED'}"
    )
    print(f"{label:<28} {elapsed:8.2f} s{verdict}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--preset", default="mixtral-8x7b")
    args = parser.parse_args()

    _timed(
        "warm-up (numba compile)", lambda: compute_stats(generate(args.preset, tokens=2000, seed=1))
    )
    trace = _timed(
        f"generate {args.tokens} tokens",
        lambda: generate(args.preset, tokens=args.tokens, seed=0),
        15,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.parquet"
        _timed("save", lambda: trace.save(path))
        print(
            f"{'file size':<28} {path.stat().st_size / 1e6:8.1f} MB "
            f"({trace.num_tokens} tokens, {trace.spec.num_moe_layers} layers, "
            f"top-{trace.spec.top_k}, "
            f"lookahead {trace.lookahead_distances})"
        )
        loaded = _timed("load (with validation)", lambda: Trace.load(path), 2)
        del loaded  # the second load reuses memory the first one faulted in
        loaded = _timed("load again", lambda: Trace.load(path), 2)
        _timed("load routing only", lambda: Trace.load(path, columns="routing"))
    stats = _timed("full stats", lambda: compute_stats(loaded), 20)
    mi = stats["mutual_information_bits"]
    print(
        f"\nentropy {stats['entropy_bits']['mean']:.3f} bits, cross-layer MI (d=1) "
        f"{mi['cross_layer']['1']['mean']:.3f} bits, LRU hit ratio at half the experts "
        f"{stats['lru_hit_ratio']['0.5']:.3f}, Belady {stats['belady_hit_ratio']['0.5']:.3f}"
    )


if __name__ == "__main__":
    main()
