"""PreScope LLaPor-style layer-aware predictor: one small network per MoE layer on the
(PCA-compressed) hidden state of that layer.

Networks of the first and last MoE layers are shallow (linear - GELU - linear); the middle
layers, whose routing is the hardest to predict, get ``middle_blocks`` gated residual blocks
(``x + sigmoid(g(x)) * f(x)``) between the input and output projections.
"""

from __future__ import annotations

import torch
from moe_offload_lab.policies.learned.features import FeatureEncoder
from moe_offload_lab.policies.learned.models.base import PerLayerFeatureModel, Shape, register_model
from torch import nn


class GatedResidual(nn.Module):
    """``x + sigmoid(gate(n(x))) * ff(n(x))`` with a layer norm ``n``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.gate = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return x + torch.sigmoid(self.gate(y)) * self.ff(y)


@register_model
class LayerAwareMLP(PerLayerFeatureModel):
    """One network per source layer, deeper in the middle of the model."""

    kind = "llapor"
    inputs = "features"
    hyper = {"hidden": 32, "middle_blocks": 2, "pca_dim": 0}

    def __init__(self, shape: Shape, **hp: object) -> None:
        super().__init__(shape, **hp)
        self.encoder = FeatureEncoder(shape.num_layers, shape.feature_dim, int(self.hp["pca_dim"]))
        width = int(self.hp["hidden"])
        nets = []
        for layer in range(shape.num_layers):
            edge = layer in (0, shape.num_layers - 1)
            blocks = [] if edge else [GatedResidual(width)
                                      for _ in range(int(self.hp["middle_blocks"]))]
            nets.append(nn.Sequential(nn.Linear(self.encoder.out_dim, width), nn.GELU(), *blocks,
                                      nn.Linear(width, self.out_width())))
        self.nets = nn.ModuleList(nets)

    def depth(self, layer: int) -> int:
        """Gated residual blocks of the network of ``layer``."""
        return sum(isinstance(m, GatedResidual) for m in self.nets[layer])

