"""ProMoE-style predictor: per source layer, a two-layer MLP on that layer's hidden state
(the trace's features) predicting the experts of the following layers."""

from __future__ import annotations

from moe_offload_lab.policies.learned.features import FeatureEncoder
from moe_offload_lab.policies.learned.models.base import PerLayerFeatureModel, Shape, register_model
from torch import nn


@register_model
class ProMoEMLP(PerLayerFeatureModel):
    """``linear - ReLU - linear`` per source layer."""

    kind = "promoe"
    inputs = "features"
    hyper = {"hidden": 64, "pca_dim": 0}

    def __init__(self, shape: Shape, **hp: object) -> None:
        super().__init__(shape, **hp)
        self.encoder = FeatureEncoder(shape.num_layers, shape.feature_dim, int(self.hp["pca_dim"]))
        width = int(self.hp["hidden"])
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(self.encoder.out_dim, width), nn.ReLU(),
                          nn.Linear(width, self.out_width()))
            for _ in range(shape.num_layers))

