"""Every synthetic preset's statistics against the published targets it is calibrated to.

    python benchmarks/calibrate_presets.py [--tokens 40000] [--preset NAME ...]

Targets (reference/routing-statistics.md): top-1 cross-layer mutual information near 0.6 bits
(Prophet: 0.62), adjacent-token reuse about 2x chance (Qwen3-30B-A3B), next-layer lookahead
accuracy as configured (Mixtral: AdapMoE's per-layer list, mean 0.866), and for Qwen3 95% of the
traffic on about half of the experts. Plug-in mutual information is biased upward by about
``(E-1)^2 / (2 N ln 2)`` bits for N tokens, so models with many experts need more tokens.
"""

from __future__ import annotations

import argparse
import time

from moe_offload_lab.traces.analysis.report import compute_stats
from moe_offload_lab.traces.synthetic import SynthConfig, generate, presets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=40_000)
    parser.add_argument("--preset", nargs="*", default=None)
    args = parser.parse_args()

    header = (f"{'preset':<18} {'E':>4} {'k':>2} {'MI top1':>8} {'MI pair':>8} {'reuse':>6} "
              f"{'H bits':>7} {'exp95%':>7} {'la acc':>7} {'la tgt':>7} {'LRU .5':>7} "
              f"{'MIN .5':>7} {'secs':>5}")
    print(header)
    print("-" * len(header))
    for name in args.preset or presets():
        start = time.perf_counter()
        trace = generate(name, tokens=args.tokens, seed=1)
        stats = compute_stats(trace, belady_fractions=(0.5,), max_distance=1, context_layers=1)
        elapsed = time.perf_counter() - start
        mi = stats["mutual_information_bits"]
        target = SynthConfig.preset(name).lookahead_accuracy
        la = stats["lookahead_accuracy"].get("1", {}).get("mean")
        print(f"{name:<18} {trace.spec.num_experts:>4} {trace.spec.top_k:>2} "
              f"{mi['cross_layer_top1']['1']['mean']:>8.3f} {mi['cross_layer']['1']['mean']:>8.3f} "
              f"{stats['adjacent_reuse_ratio']['mean']:>6.2f} "
              f"{stats['entropy_bits']['mean']:>7.2f} "
              f"{stats['traffic']['experts_for_95pct']['mean']:>7.2f} "
              f"{la if la is not None else float('nan'):>7.3f} "
              f"{sum(target) / len(target):>7.3f} {stats['lru_hit_ratio']['0.5']:>7.3f} "
              f"{stats['belady_hit_ratio']['0.5']:>7.3f} {elapsed:>5.1f}", flush=True)


if __name__ == "__main__":
    main()
