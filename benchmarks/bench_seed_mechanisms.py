"""Three seed mechanisms of issue 16 against their baselines, each on one simulated setup.

1. HOBBIT's mixed-precision loading (``policy=hobbit``) against the same LRU cache loading every
   missing expert in full: Mixtral-8x7B decoding on an RTX 4090 with 20 GB for weights and cache
   (HOBBIT's own edge setting). Prints time per output token, bytes copied and the share of
   expert computations that ran from an int4 copy (the accuracy cost).
2. PreScope's AsyncIO double buffering (``staging_buffers``): the same prefetching policy with
   1 (single), 2 (double) and 0 (unbounded) staging buffers; Mixtral-8x7B, RTX 3090, batch 4.
3. Prophet's hierarchy: the confidence-guided rule deciding host DRAM over NVMe against the same
   policy with an LRU host tier; Mixtral-8x7B on an A100 PCIe with 40 GiB of host DRAM for
   experts (of 90 GB), oracle next-layer predictions so the tiers alone differ.

The simulated figures are deterministic (no wall-clock timing); the run takes about a minute.

    python benchmarks/bench_seed_mechanisms.py [--tokens N]
"""

from __future__ import annotations

import argparse

from moe_offload_lab.policies.composed import ComposedPolicy
from moe_offload_lab.policies.config import build_policy, load_policy_config, policy_config
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.hardware import HardwareProfile
from moe_offload_lab.sim.host import HostTier
from moe_offload_lab.sim.memory import GpuMemory
from moe_offload_lab.sim.metrics import summarize
from moe_offload_lab.sim.system import load_system
from moe_offload_lab.sim.workload import static_batches
from moe_offload_lab.traces.catalog import load_yaml
from moe_offload_lab.traces.spec import ModelSpec
from moe_offload_lab.traces.synthetic import generate


def _setup(model: str, hardware: str, tokens: int):  # noqa: ANN202
    spec = ModelSpec.from_dict(load_yaml("model", model))
    hw = HardwareProfile.from_dict(load_yaml("hardware", hardware), hardware)
    return spec, hw, generate(model, tokens=tokens, seed=0)


def _run(spec, hw, trace, policy, slots: int, batch: int, **kw):  # noqa: ANN001, ANN202
    schedule = static_batches(trace, batch, prefill=False)
    engine = Engine(spec, trace, policy, hw, slots, batch, schedule=schedule,
                    system=load_system("fused"), **kw)
    result = engine.run()
    summary = summarize(result.events)
    return engine, result, summary


def hobbit(tokens: int) -> None:
    spec, hw, trace = _setup("mixtral-8x7b", "rtx4090", tokens)
    slots = GpuMemory.plan({"gpu_memory_gb": 20}, spec, hw).slots
    print(f"\n1. HOBBIT: Mixtral-8x7B decode on RTX 4090, {slots} expert slots (20 GB), batch 1")
    print(f"{'policy':28s} {'TPOT ms':>9s} {'H2D GB':>8s} {'low-bit computes':>17s}")
    base = None
    for label, threshold in (("lru (all full precision)", None), ("hobbit threshold 0.5", 0.5),
                             ("hobbit threshold 1.0", 1.0)):
        if threshold is None:
            policy = build_policy("lru")
        else:
            config = load_policy_config("hobbit").to_dict()
            config["placement"] = {**config["placement"], "threshold": threshold}
            policy = build_policy(config)
        engine, result, s = _run(spec, hw, trace, policy, slots, 1)
        tpot = result.makespan_s / result.steps * 1e3
        base = base or tpot
        computes = result.steps * spec.num_moe_layers * spec.top_k
        low = engine.protocol.n_lowbit
        print(f"{label:28s} {tpot:9.2f} {s['h2d_bytes'] / 1e9:8.1f} "
              f"{low:7d} ({low / computes:5.1%})   speedup {base / tpot:.2f}x")


def asyncio(tokens: int) -> None:
    spec, hw, trace = _setup("mixtral-8x7b", "rtx3090", tokens)
    slots = GpuMemory.plan({"gpu_memory_gb": 20}, spec, hw).slots
    print(f"\n2. AsyncIO staging buffers: Mixtral-8x7B on RTX 3090, {slots} slots, batch 4, "
          f"oracle-prefetch (next layer) and presched (horizon 3)")
    print(f"{'policy':16s} {'buffers':>8s} {'TPOT ms':>9s} {'stall s':>8s}")
    for name in ("oracle-prefetch", "presched"):
        for buffers in (1, 2, 0):
            config = {**load_policy_config(name).to_dict(),
                      "runtime": {"staging_buffers": buffers}}
            _, result, s = _run(spec, hw, trace, build_policy(config), slots, 4)
            label = {0: "unbounded", 1: "1 single", 2: "2 double"}[buffers]
            print(f"{name:16s} {label:>9s} {result.makespan_s / result.steps * 1e3:9.2f} "
                  f"{s['stall_s']:8.2f}")


class _LruHostTier(ComposedPolicy):
    """The same policy with its host tier left to LRU."""

    def reset(self, *args: object, **kwargs: object) -> None:
        super().reset(*args, **kwargs)
        self.tiered_rule = None


def tiers(tokens: int) -> None:
    spec, hw, trace = _setup("mixtral-8x7b", "a100-80gb-pcie", tokens)
    slots = GpuMemory.plan({"gpu_memory_gb": 40}, spec, hw).slots
    dram = int(40 * 1024**3 // spec.expert_bytes)
    print(f"\n3. Prophet's tiers: Mixtral-8x7B on A100 PCIe, {slots} slots, host DRAM for {dram} "
          f"of {spec.num_expert_keys} experts, NVMe {hw.nvme_gb_per_s} GB/s, batch 1")
    print(f"{'host tier':28s} {'TPOT ms':>9s} {'NVMe reads':>11s} {'promotions':>11s}")
    config = policy_config({
        "name": "oracle-confidence", "horizon": 3, "predictor": {"name": "oracle"},
        "planner": {"name": "lookahead", "budget_bytes": None, "budget_experts": 4,
                    "min_confidence": 0.3, "max_distance": 1, "cancel_stale": True},
        "replacement": {"name": "confidence"}})
    for label, cls in (("LRU", _LruHostTier), ("confidence (Prophet)", ComposedPolicy)):
        host = HostTier(dram, spec.num_expert_keys, hw.link_bytes_per_s, hw.nvme_gb_per_s * 1e9)
        _, result, _ = _run(spec, hw, trace, cls(config), slots, 1, host=host)
        print(f"{label:28s} {result.makespan_s / result.steps * 1e3:9.2f} "
              f"{host.nvme_reads:11d} {host.promotions:11d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000, help="synthetic trace tokens")
    args = parser.parse_args()
    hobbit(args.tokens)
    asyncio(args.tokens)
    tiers(args.tokens)


if __name__ == "__main__":
    main()
