"""Runs a learned model for the policy: one call per layer, batch union, Prediction lists.

Shared by the ``learned`` predictor and by the timing code, so what is timed is what the policy
does per call (tensor conversion, forward, sigmoid, batch union, ranking, list filling).
"""

from __future__ import annotations

import numpy as np
import torch
from moe_offload_lab.policies.learned.models.base import LearnedModel
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.predictors.dedup import UNIONS, BatchDemand, deduplicate
from moe_offload_lab.traces.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """``cpu`` or ``cuda[:n]``; CUDA must be present."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        return torch.device(device)
    if device != "cpu":
        raise ConfigError(f"device must be cpu or cuda, got {device!r}")
    return torch.device("cpu")


class Runner:
    """A model on a device, with the batch-union rule (``noisy-or``: ``1 - prod(1 - p)`` over
    the batch's tokens; ``max``: the most confident token)."""

    def __init__(self, model: LearnedModel, device: str = "cpu", union: str = "noisy-or",
                 min_score: float = 0.01, max_candidates: int = 0) -> None:
        if union not in UNIONS:
            raise ConfigError(f"union must be one of {', '.join(UNIONS)}, got {union!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.union = union
        self.min_score = min_score
        self.max_candidates = max_candidates
        self.shape = model.shape
        self.uses_features = model.uses_features
        self.last_demand: BatchDemand | None = None

    def probs(self, layer: int, history: np.ndarray | None,
              features: np.ndarray | None) -> torch.Tensor:
        """Per-token confidences [B, h, E] (on the CPU) for examples of source ``layer``."""
        with torch.inference_mode():
            hist = None if history is None else torch.from_numpy(history).to(self.device)
            feats = None if features is None else \
                torch.from_numpy(np.asarray(features, dtype=np.float32)).to(self.device)
            return torch.sigmoid(self.model(layer, hist, feats)).cpu()

    def predict(self, pred: Prediction, layer: int, history: np.ndarray | None,
                features: np.ndarray | None, horizon: int) -> Prediction:
        """Fill ``pred`` (already begun) for source ``layer`` from the batch's inputs
        (``history`` [B, c, k] int64 or ``features`` [B, F]): per-token probabilities, then the
        batch-aware deduplication (:func:`~policies.predictors.dedup.deduplicate`, kept in
        :attr:`last_demand`), then the ranking."""
        n_dist = min(horizon, self.shape.horizon, self.shape.num_layers - 1 - layer)
        if n_dist <= 0:
            return pred
        with torch.inference_mode():
            hist = None if history is None else torch.from_numpy(history).to(self.device)
            feats = None if features is None else \
                torch.from_numpy(np.asarray(features, dtype=np.float32)).to(self.device)
            p = torch.sigmoid(self.model(layer, hist, feats)[:, :n_dist]).cpu().numpy()  # [B, d, E]
        demand = self.last_demand = deduplicate(p, self.union, self.min_score)
        score = demand.scores  # [d, E]
        order = np.argsort(-score, axis=1, kind="stable")  # [d, E]
        scores = np.take_along_axis(score, order, 1)
        keep = (scores >= self.min_score).sum(1).tolist()  # [d]
        ranked, confidence = pred.ranked, pred.confidence
        for i in range(n_dist):
            n = keep[i]
            if self.max_candidates:
                n = min(n, self.max_candidates)
            if n:
                ranked[i] = order[i, :n].tolist()
                confidence[i] = scores[i, :n].tolist()
        return pred
