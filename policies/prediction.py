"""Prediction: a predictor's scores for the next ``h`` MoE layers, in preallocated storage.

Row ``i`` (distance ``d = i + 1``) of a prediction made at layer ``l`` is about target layer
``(l + d) % L``; when ``l + d >= L`` the target is that layer of the NEXT step (``wraps[i]``).
A score is the predictor's confidence, in [0, 1], that the current batch will need the expert at
the target layer.

Two equivalent forms are kept, so hot paths never touch numpy for a handful of experts:

- ``ranked[i]``: experts with a positive score, best first (ties: lower id first unless the
  predictor has its own order), and ``confidence[i]`` the aligned scores, plain Python;
- ``dense()``: the [h, E] float64 score array, filled from the lists on demand (or kept current
  by dense predictors).

Both are owned by the predictor and overwritten by its next ``predict``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EMPTY: tuple[int, ...] = ()


class Prediction:
    """Scores of one predictor call (see module docstring)."""

    __slots__ = ("horizon", "num_layers", "num_experts", "layer", "step", "targets", "wraps",
                 "ranked", "confidence", "scores", "dense_current", "version", "_targets_table",
                 "_blank")

    def __init__(self, horizon: int, num_layers: int, num_experts: int) -> None:
        self.horizon = horizon
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.layer = -1
        self.step = -1
        self.targets: list[int] = [0] * horizon  # target layer per distance
        self.wraps: list[bool] = [False] * horizon
        self.ranked: list[Sequence[int]] = [EMPTY] * horizon
        self.confidence: list[Sequence[float]] = [EMPTY] * horizon  # type: ignore[list-item]
        self.scores = np.zeros((horizon, num_experts), dtype=np.float64)  # [h, E]
        self.dense_current = True
        self.version = 0
        self._blank = [EMPTY] * horizon
        self._targets_table = [
            ([(layer + d) % num_layers for d in range(1, horizon + 1)],
             [layer + d >= num_layers for d in range(1, horizon + 1)])
            for layer in range(num_layers)
        ]

    def begin(self, step: int, layer: int) -> None:
        """Start a new prediction at ``(step, layer)``: set targets, clear the lists."""
        self.step = step
        self.layer = layer
        self.targets, self.wraps = self._targets_table[layer]
        self.ranked[:] = self._blank  # in place: callers may hold the lists
        self.confidence[:] = self._blank
        self.dense_current = False
        self.version += 1

    def dense(self) -> np.ndarray:
        """The [h, E] scores (zero for experts not ranked)."""
        if not self.dense_current:
            scores = self.scores
            scores.fill(0.0)
            for i in range(self.horizon):
                experts = self.ranked[i]
                if len(experts):
                    scores[i, list(experts)] = self.confidence[i]
            self.dense_current = True
        return self.scores

    def target_keys(self, distance_index: int) -> list[int]:
        """Keys of the ranked experts of row ``distance_index`` (convenience; allocates)."""
        base = self.targets[distance_index] * self.num_experts
        return [base + e for e in self.ranked[distance_index]]


def ones(n: int, _cache: dict[int, tuple[float, ...]] = {}) -> tuple[float, ...]:  # noqa: B006
    """A shared tuple of ``n`` ones (confidence of certain predictions), built once per ``n``."""
    got = _cache.get(n)
    if got is None:
        got = _cache[n] = (1.0,) * n
    return got
