"""PROBE's learned lookahead predictor as a load predictor for the balancer, and its training.

:class:`LearnedLoad` wraps a ``probe`` checkpoint trained with ``prior: lookahead``
(:mod:`policies.learned.models.gate_lookahead`). Per step it predicts, for every target layer
``t >= d``, the probability that each token of the batch routes to each expert of layer ``t``
from the token's layer ``t - d`` inputs (the next gate's picks on that hidden state and the
hidden-state features), and sums them over the batch: the expected load ``[layers, experts]``.
All layers run as one batched forward per step (the model is per token and per layer, so this
equals calling it layer by layer).

:func:`train_lookahead_model` fits such a checkpoint on a trace (split by request, early
stopping on the validation requests) with the project's training loop
(:func:`policies.learned.train.train_model`).

torch is imported only when one of these is used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.policies.balancing.base import BalanceSetup, StepBatch
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace

LAYER_CELLS = 1 << 22  # tokens x experts x layers per batched forward (memory bound)


class LearnedLoad:
    """Expected per-expert loads from a ``prior: lookahead`` probe model (see module)."""

    def __init__(self, model: Any, distance: int) -> None:
        import torch

        self.model = model.eval()
        self.distance = distance
        self.torch = torch
        s = model.shape
        self.num_layers, self.num_experts = s.num_layers, s.num_experts
        d, n_exp = distance - 1, s.num_experts
        with torch.no_grad():
            nets = model.residual
            self.w1 = torch.stack([n[0].weight.T for n in nets])  # [L, F, H]
            self.b1 = torch.stack([n[0].bias for n in nets])[:, None]  # [L, 1, H]
            cols = slice(d * n_exp, (d + 1) * n_exp)
            self.w2 = torch.stack([n[2].weight[cols].T for n in nets])  # [L, H, E]
            self.b2 = torch.stack([n[2].bias[cols] for n in nets])[:, None]  # [L, 1, E]
            self.bias = model.bias[:, d].clone()[:, None, None]  # [L, 1, 1]
            self.scale = model.scale[:, d].clone()[:, None, None]  # [L, 1, 1]
            enc = model.encoder
            self.mean, self.std = enc.mean[:, None], enc.std[:, None]  # [L, 1, F]
            self.proj = enc.proj  # [L, F, P]

    @classmethod
    def load(cls, path: str | Path, setup: BalanceSetup, distance: int) -> LearnedLoad:
        """Load checkpoint ``path`` and check it fits the run (one-line ConfigError if not)."""
        from moe_offload_lab.policies.learned import checkpoint

        if str(path) == "auto":
            raise ConfigError("checkpoint: auto is resolved by the cluster simulator "
                              "(sim.cluster.simulate_cluster trains or loads one); give a path "
                              "to a probe checkpoint when building the policy yourself")

        model, _ = checkpoint.load(path)
        if model.kind != "probe" or not getattr(model, "reads_lookahead", False):
            raise ConfigError(f"checkpoint {path} is not a probe model with prior: lookahead "
                              f"(train one with train_lookahead_model)")
        s = model.shape
        if (s.num_layers, s.num_experts, s.top_k) != \
                (setup.num_layers, setup.num_experts, setup.top_k):
            raise ConfigError(f"checkpoint {path} was trained for {s.num_layers} MoE layers x "
                              f"{s.num_experts} experts top-{s.top_k}, the run has "
                              f"{setup.num_layers} x {setup.num_experts} top-{setup.top_k}")
        if distance > s.horizon:
            raise ConfigError(f"checkpoint {path} predicts distances up to {s.horizon}, not "
                              f"{distance}")
        if setup.feature_dim != s.feature_dim:
            raise ConfigError(f"checkpoint {path} reads {s.feature_dim} hidden-state features "
                              f"per layer, the trace has {setup.feature_dim}")
        return cls(model, distance)

    def expected_load(self, batch: StepBatch) -> np.ndarray:
        """``[layers, experts]`` expected pairs per target layer (rows ``< d``: zero)."""
        torch, d = self.torch, self.distance
        out = np.zeros((self.num_layers, self.num_experts))
        src = self.num_layers - d  # source layers 0 .. src-1 predict targets d .. L-1
        if src <= 0 or batch.num_tokens == 0:
            return out
        feats = batch.features()
        ids = batch.lookahead_ids(d)
        assert feats is not None and ids is not None
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small GEMMs: extra threads only wait on a busy machine
        try:
            step = max(1, LAYER_CELLS // max(batch.num_tokens * self.num_experts, 1))
            with torch.inference_mode():
                for lo in range(0, src, step):  # a few layers at a time: bounded memory
                    hi = min(lo + step, src)
                    out[lo + d:hi + d] = self._layers(feats[:, lo:hi], ids[:, lo:hi], lo, hi)
        finally:
            torch.set_num_threads(threads)
        return out

    def _layers(self, feats: np.ndarray, ids: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """Summed probabilities ``[hi - lo, E]`` of source layers ``lo .. hi - 1``."""
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(feats.transpose(1, 0, 2),
                                                  dtype=np.float32))  # [l, B, F]
        x = ((x - self.mean[lo:hi]) / self.std[lo:hi]) @ self.proj[lo:hi]  # [l, B, P]
        hidden = torch.nn.functional.gelu(x @ self.w1[lo:hi] + self.b1[lo:hi])  # [l, B, H]
        logits = hidden @ self.w2[lo:hi] + self.b2[lo:hi] + self.bias[lo:hi]  # [l, B, E]
        picked = torch.from_numpy(np.ascontiguousarray(ids.transpose(1, 0, 2),
                                                       dtype=np.int64))  # [l, B, k]
        gain = torch.where(picked >= 0, self.scale[lo:hi].expand(-1, picked.shape[1], 1), 0.0)
        logits.scatter_add_(2, picked.clamp(min=0), gain)
        return torch.sigmoid_(logits).sum(1).double().numpy()

    def residual_s(self, matmul_s: Callable[[int, int, int], float], tokens: int) -> float:
        """Seconds of the residual MLP for ``tokens`` tokens on one GPU (two GEMMs)."""
        f, h = self.w1.shape[1], self.w1.shape[2]
        return matmul_s(tokens, f, h) + matmul_s(tokens, h, self.num_experts)


def train_lookahead_model(trace: Trace, out: str | Path, horizon: int = 1, hidden: int = 32,
                          epochs: int = 20, max_steps: int = 0, seed: int = 0,
                          test: float = 0.15, progress: bool = False) -> Path:
    """Train a ``probe`` model with ``prior: lookahead`` on ``trace`` (which needs lookahead
    columns and features) and write its checkpoint to ``out`` (``.pt`` and ``.json``).
    Requests are split 15% validation (early stopping), ``test`` held out (ids in the
    metadata), the rest training."""
    from moe_offload_lab.policies.learned import checkpoint
    from moe_offload_lab.policies.learned.data import fingerprint, split_by_request
    from moe_offload_lab.policies.learned.models import Shape, build_model
    from moe_offload_lab.policies.learned.models.gate_lookahead import lookahead_examples
    from moe_offload_lab.policies.learned.train import TrainParams, seed_all, train_model

    if trace.features is None:
        raise ConfigError("training PROBE's lookahead predictor needs a trace with features")
    missing = [d for d in range(1, horizon + 1) if d not in trace.lookahead]
    if missing:
        raise ConfigError(f"training PROBE's lookahead predictor needs lookahead distance(s) "
                          f"{missing}; the trace has {sorted(trace.lookahead) or 'none'}")
    spec = trace.spec
    split = split_by_request(trace, 0.15, test, seed)
    shape = Shape(spec.num_moe_layers, spec.num_experts, spec.top_k, horizon, 1,
                  int(trace.features.shape[2]))
    seed_all(seed)
    model = build_model("probe", shape, hidden=hidden, prior="lookahead")
    # no positive-class weighting: the balancer sums probabilities, so they must be calibrated
    params = TrainParams(epochs=epochs, max_steps=max_steps, seed=seed, batch_size=512,
                         pos_weight="none")
    history = train_model(model, lookahead_examples(trace, split.train_rows, horizon),
                          lookahead_examples(trace, split.val_rows, horizon), params, progress)
    meta = {"name": "probe-lookahead", "spec": spec.to_dict(),
            "trace": {"provenance": trace.provenance, "fingerprint": fingerprint(trace),
                      "train_requests": split.train_requests.tolist(),
                      "val_requests": split.val_requests.tolist(),
                      "test_requests": split.test_requests.tolist()},
            "train": {"epochs": epochs, "max_steps": max_steps, "seed": seed,
                      "history": history}, "cost": {}}
    return checkpoint.save(out, model, meta)
