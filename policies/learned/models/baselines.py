"""Baselines on the same inputs as the other predictors: per-layer logistic regression and a
plain MLP shared by all layers (with a one-hot of the source layer appended).

``inputs: history`` uses the multi-hot of the last ``c`` layers' experts [c * E];
``inputs: features`` the standardised features of the source layer.
"""

from __future__ import annotations

import numpy as np
import torch
from moe_offload_lab.policies.learned.features import FeatureEncoder
from moe_offload_lab.policies.learned.models.base import (
    LearnedModel,
    Shape,
    multi_hot,
    register_model,
)
from moe_offload_lab.traces.errors import ConfigError
from torch import nn


class _Inputs(LearnedModel):
    """Input encoding shared by the baselines (``hp["inputs"]``)."""

    def __init__(self, shape: Shape, **hp: object) -> None:
        inputs = hp.get("inputs", self.hyper["inputs"])
        if inputs not in ("history", "features"):
            raise ConfigError(f"predictor {self.kind!r}: inputs must be history or features, "
                              f"got {inputs!r}")
        self.inputs = str(inputs)
        super().__init__(shape, **hp)
        if self.uses_features:
            self.encoder = FeatureEncoder(shape.num_layers, shape.feature_dim)
            self.in_dim = self.encoder.out_dim
        else:
            self.in_dim = shape.context * shape.num_experts

    def fit_data(self, layer: np.ndarray, history: np.ndarray, features: np.ndarray | None,
                 targets: np.ndarray, mask: np.ndarray) -> None:
        if self.uses_features:
            assert features is not None
            self.encoder.fit(features, layer)

    def encode(self, layer: int, history: torch.Tensor,
               features: torch.Tensor | None) -> torch.Tensor:  # [B, D]
        if self.uses_features:
            assert features is not None
            return self.encoder(features, layer)
        return multi_hot(history, self.shape.num_experts)


@register_model
class LogisticRegression(_Inputs):
    """One linear layer per source layer."""

    kind = "logreg"
    hyper = {"inputs": "history"}

    def __init__(self, shape: Shape, **hp: object) -> None:
        super().__init__(shape, **hp)
        self.nets = nn.ModuleList(nn.Linear(self.in_dim, self.out_width())
                                  for _ in range(shape.num_layers))

    def forward(self, layer: int, history: torch.Tensor,
                features: torch.Tensor | None) -> torch.Tensor:
        x = self.encode(layer, history, features)  # [B, D]
        return self.nets[layer](x).view(-1, self.shape.horizon, self.shape.num_experts)


@register_model
class PlainMLP(_Inputs):
    """Two hidden ReLU layers shared by all source layers; input + one-hot(layer)."""

    kind = "mlp"
    hyper = {"inputs": "history", "hidden": 64}

    def __init__(self, shape: Shape, **hp: object) -> None:
        super().__init__(shape, **hp)
        width = int(self.hp["hidden"])
        self.net = nn.Sequential(nn.Linear(self.in_dim + shape.num_layers, width), nn.ReLU(),
                                 nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, self.out_width()))

    def forward(self, layer: int, history: torch.Tensor,
                features: torch.Tensor | None) -> torch.Tensor:
        x = self.encode(layer, history, features)  # [B, D]
        one_hot = torch.zeros(x.shape[0], self.shape.num_layers, device=x.device)  # [B, L]
        one_hot[:, layer] = 1.0
        out = self.net(torch.cat([x, one_hot], 1))
        return out.view(-1, self.shape.horizon, self.shape.num_experts)
