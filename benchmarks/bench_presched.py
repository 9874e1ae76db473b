"""PreSched (exact) against the greedy cost-aware planner and an exhaustive search.

    python benchmarks/bench_presched.py [--cases 2000] [--seed 0]

Random planning problems at one layer (a Mixtral-shaped model, horizon 3): random batch-level
predictions (3-8 candidates over the next three layers), random link speeds (a copy takes 0.2
to 3 layer times), queued copies and batch sizes, the CPU option on. Both planners see the same
context and prediction; both plans are scored with PreSched's objective (expected stall,
``presched.plan_cost``) on PreSched's instance, and the exhaustive search (every subset in
every order) gives the optimum where the instance has at most 7 candidates. Prints: how often
PreSched matches the exhaustive optimum, how often and by how much greedy's plan costs more, and
each planner's mean time per call.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from moe_offload_lab.policies import CostModel, LayerContext, SlotCache
from moe_offload_lab.policies.planners.presched import exhaustive_cost, plan_cost
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.registry import PLANNERS
from moe_offload_lab.traces import load_model


def case(rng: np.random.Generator, spec):  # noqa: ANN001, ANN202
    layer_s = 1e-3
    copy_s = layer_s * rng.uniform(0.2, 3.0)
    cost = CostModel(link_bytes_per_s=spec.expert_bytes / copy_s, copy_latency_s=0.0,
                     expert_bytes=spec.expert_bytes, gpu_expert_s_per_token=2e-6,
                     gpu_expert_fixed_s=0.0, cpu_expert_s_per_token=layer_s * rng.uniform(0.1, 2),
                     cpu_expert_fixed_s=0.0, layer_other_s=layer_s)
    n_layers, n_experts = spec.num_moe_layers, spec.num_experts
    cache = SlotCache(64, n_experts, n_layers)
    layer = int(rng.integers(0, n_layers - 4))
    for key in rng.choice(n_experts, size=int(rng.integers(0, 3)), replace=False).tolist():
        cache.start_fetch((layer + 4) * n_experts + key)  # copies already on the link
    batch = int(rng.choice([1, 4, 16]))
    ctx = LayerContext(spec, cache)
    ctx.begin_step(0, np.zeros(batch, np.int32), np.ones(batch, np.int8))
    ctx.set_layer(layer, [0, 1], [batch, batch])
    prediction = Prediction(3, n_layers, n_experts)
    prediction.begin(0, layer)
    n_candidates = int(rng.integers(3, 9))
    where = rng.multinomial(n_candidates, [1 / 3] * 3)
    for i in range(3):
        experts = rng.choice(n_experts, size=where[i], replace=False).tolist()
        conf = sorted(rng.uniform(0.05, 1.0, size=where[i]).tolist(), reverse=True)
        prediction.ranked[i], prediction.confidence[i] = experts, conf
    return cost, ctx, prediction


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    spec = load_model("mixtral-8x7b")
    rng = np.random.default_rng(args.seed)
    exact_ok = exact_n = worse = 0
    excess, rel, seconds = [], [], {"presched": 0.0, "cost-aware": 0.0}
    for _ in range(args.cases):
        cost, ctx, prediction = case(rng, spec)
        plans = {}
        for name in ("presched", "cost-aware"):
            planner = PLANNERS.build({"name": name, "min_confidence": 0.05,
                                      "consider_cpu": True})
            planner.reset(spec, 64, cost, 3)
            started = time.perf_counter()
            plans[name] = list(planner.plan(ctx, prediction).keys)
            seconds[name] += time.perf_counter() - started
            if name == "presched":
                inst = planner.full_instance()
        index = {item.key: i for i, item in enumerate(inst.items)}
        exact = plan_cost(inst, [index[k] for k in plans["presched"]])
        greedy = plan_cost(inst, [index[k] for k in plans["cost-aware"]])
        if len(inst.items) <= 7:
            exact_n += 1
            exact_ok += abs(exact - exhaustive_cost(inst)) <= 1e-12
        if greedy > exact + 1e-12:
            worse += 1
            excess.append(greedy - exact)
            rel.append((greedy - exact) / max(greedy, 1e-12))
    print(f"{args.cases} random planning problems (Mixtral shape, horizon 3, CPU option on)")
    print(f"PreSched equals the exhaustive optimum: {exact_ok} / {exact_n} instances with <= 7 "
          f"candidates")
    share = worse / args.cases
    print(f"greedy plan costs more than PreSched's: {worse} / {args.cases} ({100 * share:.1f}%)"
          + (f"; mean excess {1e3 * np.mean(excess):.3f} ms of expected stall "
             f"({100 * np.mean(rel):.1f}% of greedy's plan cost), worst "
             f"{1e3 * np.max(excess):.3f} ms" if excess else ""))
    for name, total in seconds.items():
        print(f"{name}: {1e6 * total / args.cases:.1f} us per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
