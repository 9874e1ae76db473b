"""The common shape of every learned predictor network.

``forward(layer, history, features) -> logits [B, h, E]`` for a batch whose examples all come
from source layer ``layer`` (an int: the policy calls it once per layer, and training groups
batches by layer), ``history`` [B, c, k] int64 (``E`` pads), ``features`` [B, F] float32 or None.
``sigmoid(logits)[b, d-1, e]`` is the confidence that token ``b`` routes to expert ``e`` at
layer ``layer + d``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from moe_offload_lab.traces.errors import ConfigError
from torch import nn


@dataclass(frozen=True)
class Shape:
    """The routing shape a model is built for (stored in the checkpoint)."""

    num_layers: int
    num_experts: int
    top_k: int
    horizon: int
    context: int
    feature_dim: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class LearnedModel(nn.Module):
    """Base class: subclasses set ``kind``, ``inputs`` ("history" | "features") and
    ``hyper`` (their default hyperparameters), and implement :meth:`forward`."""

    kind = "model"
    inputs = "history"
    hyper: dict[str, Any] = {}

    def __init__(self, shape: Shape, **hp: Any) -> None:
        super().__init__()
        unknown = sorted(set(hp) - set(self.hyper))
        if unknown:
            raise ConfigError(f"predictor {self.kind!r}: unknown hyperparameter(s) "
                              f"{', '.join(unknown)}; valid: {', '.join(sorted(self.hyper))}")
        self.shape = shape
        self.hp = {**self.hyper, **hp}
        if self.uses_features and shape.feature_dim < 1:
            raise ConfigError(f"predictor {self.kind!r} needs a trace with features")

    @property
    def uses_features(self) -> bool:
        return self.inputs == "features"

    def out_width(self) -> int:
        return self.shape.horizon * self.shape.num_experts

    def fit_data(self, layer: np.ndarray, history: np.ndarray, features: np.ndarray | None,
                 targets: np.ndarray, mask: np.ndarray) -> None:
        """Data-dependent initialisation from the training examples (default: nothing)."""

    def forward(self, layer: int, history: torch.Tensor,
                features: torch.Tensor | None) -> torch.Tensor:  # [B, h, E]
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """What :func:`build_model` needs to rebuild this model."""
        return {"kind": self.kind, "shape": self.shape.to_dict(), "hp": dict(self.hp)}


MODELS: dict[str, type[LearnedModel]] = {}


def register_model(cls: type[LearnedModel]) -> type[LearnedModel]:
    """Class decorator: make the model buildable by its ``kind``."""
    MODELS[cls.kind] = cls
    return cls


def build_model(kind: str, shape: Shape | dict, **hp: Any) -> LearnedModel:
    """A fresh model of ``kind`` for ``shape`` with hyperparameters ``hp``."""
    _load_all()
    if kind not in MODELS:
        raise ConfigError(f"unknown learned predictor {kind!r}; available: "
                          f"{', '.join(sorted(MODELS))}")
    if isinstance(shape, dict):
        shape = Shape(**shape)
    return MODELS[kind](shape, **hp)


def _load_all() -> None:
    from moe_offload_lab.policies.learned.models import (  # noqa: F401 - registration side effects
        baselines,
        gate_lookahead,
        history_transformer,
        layer_aware,
        promoe,
    )


def multi_hot(history: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[B, c, k] ids (``E`` pads) -> [B, c * E] float multi-hot."""
    hot = nn.functional.one_hot(history, num_experts + 1)[..., :num_experts].sum(2)  # [B, c, E]
    return hot.flatten(1).float()


class PerLayerFeatureModel(LearnedModel):
    """A model with one network per source layer (``self.nets``) over the layer's encoded
    hidden-state features (``self.encoder``, a :class:`~policies.learned.features.FeatureEncoder`
    fitted on the training features). Subclasses build both in ``__init__``."""

    def fit_data(self, layer: np.ndarray, history: np.ndarray, features: np.ndarray | None,
                 targets: np.ndarray, mask: np.ndarray) -> None:
        """Fit the feature encoder (standardisation, PCA) on the training features."""
        assert features is not None
        self.encoder.fit(features, layer)

    def forward(self, layer: int, history: torch.Tensor,
                features: torch.Tensor | None) -> torch.Tensor:
        """Scores [B, h, E] of source layer ``layer`` from its features [B, F]."""
        assert features is not None
        x = self.encoder(features, layer)  # [B, P]
        return self.nets[layer](x).view(-1, self.shape.horizon, self.shape.num_experts)
