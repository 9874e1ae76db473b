"""The executor against the figures the hw issue's GPU targets name, after a calibration:

1. pinned copy bandwidth: the calibrated copy table's bandwidth at one expert's size and the
   executor's own copies (bytes over duration of its copy events, median) against the best
   bandwidth the calibration measured (ratios);
2. the executor's overhead with every expert resident (``run_replay(resident_all=True)``)
   against a plain resident forward of the same replay model (the same blocks, experts computed
   directly from device-resident weights, no executor machinery): mean step latency, ratio;
3. the simulator's median and worst absolute error on mean step latency over a small validation
   matrix (policies x cache fractions x batches) with the calibrated profile.

On a machine without CUDA everything runs on the CPU twin (host memory as "device" memory, plain
copies): the script says so, and the figures check the pipeline, not GPU accuracy.

    python benchmarks/bench_hw.py [--device auto] [--model NAME] [--layers N] [--tokens 128]
                                  [--repeats N] [--out DIR]

Defaults: on CUDA Mixtral-8x7B cut to 2 layers (the validation builds its pinned expert store
once and reuses it for every cell; the single runs here share one too), on the CPU twin
tiny-moe-stdlib.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from moe_offload_lab.hw.calibrate.devices import resolve_device, synchronize
from moe_offload_lab.hw.calibrate.run import CalibrationConfig, calibrate
from moe_offload_lab.hw.validate.matrix import ValidationConfig, make_trace, model_spec
from moe_offload_lab.hw.validate.run import validate
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.hardware import load_hardware


class _PlainExecutor:
    """Resident experts computed directly: the replay model's forward without the executor."""

    def __init__(self, spec, store, device) -> None:  # noqa: ANN001
        from moe_offload_lab.hw.store import expert_ffn

        self.ffn = expert_ffn
        self.spec = spec
        self.weights = store.host.to(device)  # [K, P] every expert resident

    def begin_step(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        """Nothing to prepare."""

    def end_step(self) -> None:
        """Nothing to finish."""

    def log_other(self, *args) -> None:  # noqa: ANN002
        """No event log."""

    def moe_layer(self, layer, x, ids, gates, lookahead):  # noqa: ANN001, ANN201
        """Weighted sum of the routed experts of ``x`` [B, H] (ids, gates [B, k])."""
        spec = self.spec
        out = torch.zeros_like(x)  # [B, H]
        ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))  # [B, k]
        gates_t = torch.as_tensor(np.asarray(gates, dtype=np.float32))  # [B, k]
        for e in torch.unique(ids_t).tolist():
            rows, slot = (ids_t == e).nonzero(as_tuple=True)
            w = gates_t[rows, slot].to(x.device, x.dtype)[:, None]  # [n, 1]
            rows_d = rows.to(x.device)
            y = self.ffn(x[rows_d], self.weights[layer * spec.num_experts + e],
                         spec.hidden_size, spec.expert_intermediate_size, spec.expert_matrices)
            out.index_add_(0, rows_d, y * w)
        return out


def plain_forward_ms(spec, trace, batch: int, device: str, seed: int = 0,  # noqa: ANN001
                     assets=None) -> float:  # noqa: ANN001
    """Mean step latency (ms) of the replay model's plain resident forward (``assets``: the
    store and model of :func:`hw.replay.build_assets` to reuse)."""
    from moe_offload_lab.hw.device import Device
    from moe_offload_lab.hw.replay import build_assets
    from moe_offload_lab.sim.workload import static_batches

    assets = assets or build_assets(spec, device, seed)
    assets.check(spec, device, seed)
    dev = Device(device)
    model = assets.model
    plain = _PlainExecutor(spec, assets.store, dev.torch_device)
    schedule = static_batches(trace, batch, prefill=True)
    kv = [{} for _ in range(spec.num_layers)]
    times = []
    with torch.inference_mode():
        for step, rows in enumerate(schedule):
            synchronize(dev.torch_device)
            t0 = time.perf_counter()
            model.step(plain, step, rows, trace, kv)
            synchronize(dev.torch_device)
            times.append(time.perf_counter() - t0)
    return 1e3 * float(np.mean(times))


def main() -> None:
    """Calibrate, validate a small matrix, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", default=None)
    parser.add_argument("--repeats", type=int, default=None,
                        help="executor runs per validation cell, the median one counts "
                             "(default: 3 on the CPU twin, 1 on CUDA)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    model = args.model or ("mixtral-8x7b" if gpu else "tiny-moe-stdlib")
    layers = args.layers if args.layers is not None else (2 if gpu else None)
    repeats = args.repeats or (1 if gpu else 3)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-hw-"))
    if not gpu:
        print("NOTE: no CUDA here: CPU twin figures (host memcpy, host compute); they check the "
              "pipeline, not GPU performance")

    t0 = time.perf_counter()
    calib = calibrate(CalibrationConfig(
        device=str(device), model=model, out=str(out / "profile.yaml"), progress=False,
        repeats=10 if gpu else 5, contexts=[512] if gpu else [64],
        reference_context=512 if gpu else 64, batches=[1, 4, 16, 64, 256],
        policies=["lru", "gate-lookahead"]))
    prov = calib.profile["measured"]["provenance"]
    profile = load_hardware(str(out / "profile.yaml"))
    print(f"calibration ({time.perf_counter() - t0:.1f} s) on {prov['device']}, "
          f"{prov['dtype']}, model {model}")

    cfg = ValidationConfig(model=model, layers=layers, device=str(device), profile=str(
        out / "profile.yaml"), trace={"tokens": args.tokens}, out=str(out / "validate"),
        policies=["lru", "lfu", "fifo", "gate-lookahead"],
        cache={"fractions": [0.25, 0.5, 0.75]}, batches=[1, 16], progress=False,
        repeats=repeats)
    spec = model_spec(cfg)
    compute = ComputeModel(spec, profile)
    peak = prov["h2d_peak_gb_per_s"]
    expert_gbps = spec.expert_bytes / compute.copy_s(spec.expert_bytes) / 1e9
    print(f"1. copy bandwidth: peak measured {peak:.2f} GB/s; at one expert "
          f"({spec.expert_bytes / 1e6:.1f} MB) {expert_gbps:.2f} GB/s = "
          f"{expert_gbps / peak:.0%} of peak")

    from moe_offload_lab.hw.replay import build_assets, release_memory, run_replay

    trace = make_trace(cfg, spec)
    assets = build_assets(spec, str(device))  # one store and model for the runs below
    run_replay(spec, trace, None, batch=1, device=str(device), resident_all=True,
               hardware=profile, assets=assets)  # warm-up
    resident = run_replay(spec, trace, None, batch=1, device=str(device), resident_all=True,
                          hardware=profile, assets=assets)
    plain_ms = plain_forward_ms(spec, trace, 1, str(device), assets=assets)
    exec_ms = resident.summary["step_latency_ms_mean"]
    print(f"2. all-resident overhead: executor {exec_ms:.3f} ms/step, plain forward "
          f"{plain_ms:.3f} ms/step: {exec_ms / plain_ms - 1:+.1%}")
    lru = run_replay(spec, trace, "lru", capacity_slots=max(spec.top_k,
                     spec.num_expert_keys // 4), batch=1, device=str(device), hardware=profile,
                     assets=assets)
    del assets
    release_memory(str(device))  # the validation builds its own
    ev = lru.events
    copies = ev[(ev["kind"] == "copy") & (ev["bytes"] > 0) & (ev["end_s"] > ev["start_s"])]
    if len(copies):
        rates = (copies["bytes"] / (copies["end_s"] - copies["start_s"]) / 1e9).tolist()
        achieved = statistics.median(rates)
        print(f"   executor copies (lru, 25% cache): median {achieved:.2f} GB/s = "
              f"{achieved / peak:.0%} of peak over {len(copies)} copies")

    t0 = time.perf_counter()
    result = validate(cfg)
    o = result.overall
    print(f"3. simulator error over {o['cells']} cells ({time.perf_counter() - t0:.1f} s): mean "
          f"step latency median |err| {o['median_abs_rel_err_step_ms_mean']:.1%}, worst "
          f"{o['max_abs_rel_err_step_ms_mean']:.1%}; p99 median |err| "
          f"{o['median_abs_rel_err_step_ms_p99']:.1%}")
    print(f"files in {out}")


if __name__ == "__main__":
    main()
