"""Decision cost of every bundled policy per MoE layer: measured now, and what the simulator
charges for it (from the measured cost table) against what the components declare.

    python benchmarks/bench_policies.py [--tokens N] [--batch-tokens N] [--policies a,b]
                                        [--batches 1,32] [--repeat R] [--table PATH]

For each policy, model shape (Mixtral-8x7B: L=32, E=8, k=2; Qwen3-30B-A3B: L=48, E=128, k=8) and
batch size, a synthetic trace of the model's preset (``traces.synthetic``, with lookahead columns
at distances 1-3; ``--source toy`` or a missing generator falls back to ``policies.toy_traces``,
15% wrong lookahead) is replayed through the full engine call sequence against a cache holding 25%
of the experts, with instant copies (:mod:`policies.decision_timing`: the replay calling the
policy, minus the same replay re-applying its decisions; best of ``--repeat``).

Columns per shape and batch: ``meas`` (measured now), ``chg`` (what the simulator charges per
layer: the composed policy's cost from the table, ``conf/decision_costs/default.yaml`` unless
``--table``), ``decl`` (the sum of the components' declared figures, what was charged before the
table existed). Targets at batch 1: < 5 us for lru, lfu and gate-lookahead, < 20 us for the other
heuristics; oracles are reported without a target. Timings depend on the machine and its load:
compare columns of one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_offload_lab.policies import load_policy  # noqa: E402
from moe_offload_lab.policies.config import shape_free_policies  # noqa: E402
from moe_offload_lab.policies.cost_table import (  # noqa: E402
    charged_cost,
    declared_charge,
    load_table,
)
from moe_offload_lab.policies.decision_timing import (  # noqa: E402
    CACHE_FRACTION,
    Workload,
    policy_seconds,
)
from moe_offload_lab.policies.toy_traces import make_trace  # noqa: E402
from moe_offload_lab.traces import MoeLabError, load_model  # noqa: E402

TARGET_US = {"lru": 5.0, "lfu": 5.0, "gate-lookahead": 5.0}
OTHER_TARGET_US = 20.0


def measure(policy_name: str, work: Workload, repeat: int) -> float:
    """Policy microseconds per layer visit."""
    return policy_seconds(load_policy(policy_name), work, repeat) * 1e6


def charged_us(policy_name: str, work: Workload, table) -> tuple[float, float]:  # noqa: ANN001
    """(charged from ``table``, declared by the components) microseconds per layer at the
    workload's batch."""
    policy = load_policy(policy_name)
    horizon = min(policy.config.horizon, work.spec.num_moe_layers)  # as reset sets it
    components = policy.components_by_kind()
    charged = charged_cost(components, work.spec, horizon, table).cost
    declared = declared_charge(components).cost
    return charged.seconds(work.batch) * 1e6, declared.seconds(work.batch) * 1e6


def _trace(spec, tokens: int, source: str):  # noqa: ANN001, ANN202
    """A trace of ``tokens`` tokens for ``spec``: its synthetic preset, else a toy trace."""
    if source == "synthetic":
        try:
            from moe_offload_lab.traces.synthetic import generate

            return generate(spec.name, tokens=tokens, seed=1), "synthetic"
        except (ImportError, MoeLabError):
            source = "toy"
    trace = make_trace(spec, tokens, requests=max(1, tokens // 128), seed=1, lookahead=(1, 2, 3),
                       lookahead_error=0.15)
    return trace, source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="trace tokens at batch 1")
    parser.add_argument("--batch-tokens", type=int, default=2048,
                        help="trace tokens for larger batches")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--policies", default="", help="comma-separated (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--source", choices=("synthetic", "toy"), default="synthetic",
                        help="trace generator (default: the model's traces.synthetic preset)")
    parser.add_argument("--table", help="cost table (default: conf/decision_costs/default.yaml)")
    args = parser.parse_args(argv)
    names = [p for p in args.policies.split(",") if p] or shape_free_policies()
    batches = [int(b) for b in args.batches.split(",")]
    table = load_table(args.table)
    models = [load_model("mixtral-8x7b"), load_model("qwen3-30b-a3b")]
    works = {}
    source = args.source
    for spec in models:
        for batch in batches:
            tokens = args.tokens if batch == 1 else args.batch_tokens
            trace, source = _trace(spec, tokens, source)
            works[spec.name, batch] = Workload(trace, batch)
    columns = [(spec.name, batch) for spec in models for batch in batches]
    short = {"mixtral-8x7b": "mixtral", "qwen3-30b-a3b": "qwen3-30b"}
    print(f"policy decision cost per MoE layer visit, microseconds ({source} traces, cache "
          f"{CACHE_FRACTION:.0%} of experts, best of {args.repeat}); meas = measured now, "
          f"chg = charged by the simulator from {table.path if table else 'no table'}, "
          f"decl = the components' declared sum")
    header = f"{'policy':<26}" + "".join(f"{short[m] + ' b' + str(b) + ' meas/chg/decl':>30}"
                                         for m, b in columns)
    header += f"{'target b1':>11}  ok"
    print(header)
    print("-" * len(header))
    failed = []
    for name in names:
        cells, at_b1 = [], []
        for col in columns:
            measured = measure(name, works[col], args.repeat)
            charged, declared = charged_us(name, works[col], table)
            cells.append(f"{measured:9.2f}/{charged:8.2f}/{declared:7.2f}")
            if col[1] == 1:
                at_b1.append(measured)
        oracle = load_policy(name).is_oracle
        target = None if oracle else TARGET_US.get(name, OTHER_TARGET_US)
        ok = "-" if target is None or not at_b1 else ("yes" if max(at_b1) < target else "NO")
        if ok == "NO":
            failed.append(name)
        label = name + (" (upper bound)" if oracle else "")
        row = f"{label:<26}" + "".join(f"{c:>30}" for c in cells)
        row += f"{'-' if target is None else f'< {target:g}':>11}  {ok}"
        print(row, flush=True)
    print("(a 10,000-token Mixtral run at batch 1 makes 320,000 layer visits: "
          "1 us per visit = 0.32 s of the simulator's 3 s budget)")
    if failed:
        print(f"over target at batch 1: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
