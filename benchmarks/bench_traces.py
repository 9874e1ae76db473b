"""Trace pipeline benchmark: generate, save, load and analyse a Mixtral-shaped trace.

    python benchmarks/bench_traces.py [--tokens 1000000] [--preset mixtral-8x7b] [--baseline DIR]

Targets on a 2-core machine for 1,000,000 tokens: generate < 15 s, load < 2 s, full stats < 20 s.
The first run also compiles the numba kernels (cached afterwards); the script warms them up on a
small trace first so the timings show steady-state cost, and prints the warm-up time separately.

Generation is timed as the trace the simulator replays (routing, gates, lookahead columns) and
again with the preset's feature columns (16 float16 per layer and token: 1 GB for this trace, so
save, load and stats run on the trace without them, as before). ``--baseline DIR`` also times
the generator of an older checkout of this repository in the same run (``git worktree add DIR
<commit>``; its ``traces/synthetic.py`` with its own ``conf/``), on the same preset and token
count, and prints the ratio: on a machine shared with other work, timings from separate runs are
not comparable.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from moe_offload_lab.traces.analysis.report import compute_stats
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.synthetic import generate


def _baseline_generate(folder: Path, preset: str, tokens: int):
    """A function timing the generator of the checkout at ``folder`` (its module and conf)."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("baseline_synthetic",
                                                  folder / "traces" / "synthetic.py")
    if spec is None or spec.loader is None or not (folder / "conf" / "trace").is_dir():
        raise SystemExit(f"{folder}: not a checkout of this repository")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)

    def run(n: int = tokens):
        previous = os.environ.get("MOE_LAB_CONF")
        os.environ["MOE_LAB_CONF"] = str(folder / "conf")
        try:
            return module.generate(module.SynthConfig.preset(preset), tokens=n, seed=0)
        finally:
            if previous is None:
                os.environ.pop("MOE_LAB_CONF")
            else:
                os.environ["MOE_LAB_CONF"] = previous

    return run


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
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="an older checkout whose generator to time in the same run")
    args = parser.parse_args()

    _timed(
        "warm-up (numba compile)", lambda: compute_stats(generate(args.preset, tokens=2000, seed=1))
    )
    if args.baseline is not None:
        old = _baseline_generate(args.baseline, args.preset, args.tokens)
        _timed("baseline warm-up", lambda: old(2000))
        start = time.perf_counter()
        old()
        old_s = time.perf_counter() - start
        print(f"{'baseline generate':<28} {old_s:8.2f} s  ({args.baseline})", flush=True)
    start = time.perf_counter()
    trace = generate(args.preset, tokens=args.tokens, seed=0, features=0)
    new_s = time.perf_counter() - start
    print(f"{f'generate {args.tokens} tokens':<28} {new_s:8.2f} s  target < 15 s  "
          f"{'OK' if new_s < 15 else 'MISSED'}  (routing, gates, lookahead)", flush=True)
    if args.baseline is not None:
        print(f"{'new / baseline':<28} {new_s / old_s:8.2f} x  target <= 1.5  "
              f"{'OK' if new_s / old_s <= 1.5 else 'MISSED'}", flush=True)
    start = time.perf_counter()
    with_features = generate(args.preset, tokens=args.tokens, seed=0)
    features_s = time.perf_counter() - start
    print(f"{'generate with features':<28} {features_s:8.2f} s", flush=True)
    if with_features.features is not None:
        print(f"{'  features':<28} {with_features.features.shape[2]} per layer, "
              f"{with_features.features.nbytes / 1e6:.0f} MB in memory (float16)")
    if args.baseline is not None:
        print(f"{'  with features / baseline':<28} {features_s / old_s:8.2f} x")
    del with_features
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
