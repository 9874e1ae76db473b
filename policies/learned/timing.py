"""Inference cost of a learned predictor per call, and the DecisionCost fitted from it.

CPU: the policy's own per-call path (:class:`~policies.learned.runner.Runner`: tensors, forward,
sigmoid, batch union, ranking) under ``torch.inference_mode``, at batch 1 and 32, for every
source layer (the cost is charged per layer, and per-layer networks differ in depth), after a
warm-up; the median of ``repeats`` calls per layer, averaged over layers. One intra-op thread
(the policy's calls are far too small to gain from more).

``fixed_s`` and ``per_token_s`` are the line through the batch-1 and batch-32 points (clipped
at zero): ``seconds(B) = fixed_s + B * per_token_s``.

CUDA (``device="cuda"``): the same forward on the GPU, optionally captured in a CUDA graph per
batch size (static input buffers, ``graph.replay()``), timed with synchronisation and including
the copy of the scores back to the host. Refused with a ConfigError when CUDA is absent.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from moe_offload_lab.policies.learned.models.base import LearnedModel
from moe_offload_lab.policies.learned.runner import Runner, resolve_device
from moe_offload_lab.policies.prediction import Prediction


def _inputs(model: LearnedModel, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    s = model.shape
    rng = np.random.default_rng(seed)
    history = rng.integers(0, s.num_experts, size=(batch, s.context, s.top_k)).astype(np.int64)
    features = rng.standard_normal((batch, max(s.feature_dim, 1))).astype(np.float32)
    return history, features  # [B, c, k], [B, F]


def fit_cost(batch_s: dict[int, float]) -> tuple[float, float]:
    """``(fixed_s, per_token_s)`` through the smallest and largest batch's times."""
    small, large = min(batch_s), max(batch_s)
    if small == large:
        return batch_s[small], 0.0
    per_token = max(0.0, (batch_s[large] - batch_s[small]) / (large - small))
    return max(0.0, batch_s[small] - small * per_token), per_token


def measure_cpu(model: LearnedModel, batches: Sequence[int] = (1, 32), repeats: int = 30,
                warmup: int = 5, threads: int = 1) -> dict[str, Any]:
    """Per-call seconds on the CPU for each batch size (see module docstring)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runner = Runner(model, "cpu")
        s = model.shape
        pred = Prediction(s.horizon, s.num_layers, s.num_experts)
        out: dict[int, float] = {}
        per_layer: dict[int, list[float]] = {}
        for batch in batches:
            history, features = _inputs(model, batch)
            hist = None if model.uses_features else history
            feats = features if model.uses_features else None
            layer_s = []
            for layer in range(s.num_layers):
                times = []
                for i in range(warmup + repeats):
                    start = time.perf_counter()
                    pred.begin(0, layer)
                    runner.predict(pred, layer, hist, feats, s.horizon)
                    if i >= warmup:
                        times.append(time.perf_counter() - start)
                layer_s.append(statistics.median(times))
            out[batch] = float(np.mean(layer_s))
            per_layer[batch] = layer_s
        fixed, per_token = fit_cost(out)
        return {"device": "cpu", "threads": threads, "repeats": repeats, "warmup": warmup,
                "batch_s": {str(b): v for b, v in out.items()},
                "per_layer_s": {str(b): v for b, v in per_layer.items()},
                "fixed_s": fixed, "per_token_s": per_token}
    finally:
        torch.set_num_threads(old)


def measure_cuda(model: LearnedModel, batches: Sequence[int] = (1, 32), repeats: int = 30,
                 warmup: int = 5, graphs: bool = True, device: str = "cuda") -> dict[str, Any]:
    """Per-call seconds on a CUDA device, optionally through CUDA graphs (ConfigError without
    CUDA). Not exercised on machines without a GPU."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    s = model.shape
    out: dict[int, float] = {}
    for batch in batches:
        history, features = _inputs(model, batch)
        hist = torch.from_numpy(history).to(dev)
        feats = torch.from_numpy(features).to(dev) if model.uses_features else None
        layer_s = []
        for layer in range(s.num_layers - 1):  # the last layer predicts nothing
            with torch.inference_mode():
                def step(layer: int = layer, hist: torch.Tensor = hist,
                         feats: torch.Tensor | None = feats) -> torch.Tensor:
                    return torch.sigmoid(model(layer, hist, feats))

                if graphs:
                    stream = torch.cuda.Stream(dev)
                    stream.wait_stream(torch.cuda.current_stream(dev))
                    with torch.cuda.stream(stream):
                        for _ in range(3):
                            step()
                    torch.cuda.current_stream(dev).wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        static_out = step()

                    def run(graph: Any = graph, static_out: torch.Tensor = static_out) -> Any:
                        graph.replay()
                        return static_out.cpu()
                else:
                    def run() -> Any:
                        return step().cpu()
                times = []
                for i in range(warmup + repeats):
                    torch.cuda.synchronize(dev)
                    start = time.perf_counter()
                    run()
                    torch.cuda.synchronize(dev)
                    if i >= warmup:
                        times.append(time.perf_counter() - start)
                layer_s.append(statistics.median(times))
        out[batch] = float(np.mean(layer_s)) * (s.num_layers - 1) / s.num_layers
    model.to("cpu")
    fixed, per_token = fit_cost(out)
    return {"device": str(dev), "graphs": graphs, "repeats": repeats,
            "batch_s": {str(b): v for b, v in out.items()}, "fixed_s": fixed,
            "per_token_s": per_token, "gpu": torch.cuda.get_device_name(dev)}
