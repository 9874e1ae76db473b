"""PreScope's LLaPor (Learnable Layer-Aware Predictor): one network per MoE layer on that
layer's hidden state, PCA-compressed, then Linear + GELU blocks, deeper at the middle layers.

For source layer ``l`` the network is::

    x [B, F] -> standardise, project on the layer's first ``pca_dim`` principal axes  [B, P]
             -> Linear(P, hidden) + GELU
             -> depth(l) x [x + GELU(Linear(hidden, hidden)(x))]
             -> Linear(hidden, h * E)                      logits of layers l+1 .. l+h

``depth(l)`` follows a triangle over the layers: ``min_blocks`` at the first and last MoE layers,
``max_blocks`` in the middle, where PreScope finds routing hardest to predict (the first layers'
routing is close to the token embedding, the last layers' strongly skewed). The PCA axes,
means and scales are fitted per layer on the training examples (``pca_dim`` at least the feature
width keeps every axis: standardisation only).

What is ours (the material we have gives the shape of the network, not its sizes): ``hidden``,
the depth profile, ``pca_dim``, the skip connection around each hidden block (plain stacks of
Linear + GELU train markedly slower at depth 3); and the input: the trace's ``features``
columns, which are the hidden state itself only when a recorder wrote them so (the bundled
trace stores 16 random projections of its 128-wide hidden state, see
``policies/learned/README.md``).
"""

from __future__ import annotations

from moe_offload_lab.policies.learned.features import FeatureEncoder
from moe_offload_lab.policies.learned.models.base import PerLayerFeatureModel, Shape, register_model
from moe_offload_lab.traces.errors import ConfigError
from torch import Tensor, nn


class LinearGELU(nn.Module):
    """One hidden block: ``x + GELU(Linear(x))``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + nn.functional.gelu(self.linear(x))


def depth_profile(num_layers: int, min_blocks: int, max_blocks: int) -> list[int]:
    """Hidden Linear+GELU blocks per MoE layer: ``min_blocks`` at both ends, rising linearly to
    ``max_blocks`` at the middle layer(s)."""
    if num_layers == 1:
        return [max_blocks]
    out = []
    for layer in range(num_layers):
        centre = 1.0 - abs(2.0 * layer / (num_layers - 1) - 1.0)  # 0 at the ends, 1 in the middle
        out.append(min_blocks + int((max_blocks - min_blocks) * centre + 0.5))
    return out


@register_model
class LayerAwareMLP(PerLayerFeatureModel):
    """LLaPor: per-layer PCA + Linear/GELU networks, deeper in the middle of the model."""

    kind = "llapor"
    inputs = "features"
    hyper = {"hidden": 64, "min_blocks": 1, "max_blocks": 3, "pca_dim": 64}

    def __init__(self, shape: Shape, **hp: object) -> None:
        super().__init__(shape, **hp)
        lo, hi = int(self.hp["min_blocks"]), int(self.hp["max_blocks"])
        if not 0 <= lo <= hi:
            raise ConfigError(f"llapor: need 0 <= min_blocks <= max_blocks, got {lo} and {hi}")
        self.encoder = FeatureEncoder(shape.num_layers, shape.feature_dim, int(self.hp["pca_dim"]))
        width = int(self.hp["hidden"])
        nets = []
        for blocks in depth_profile(shape.num_layers, lo, hi):
            body = [nn.Linear(self.encoder.out_dim, width), nn.GELU()]
            body += [LinearGELU(width) for _ in range(blocks)]
            nets.append(nn.Sequential(*body, nn.Linear(width, self.out_width())))
        self.nets = nn.ModuleList(nets)

    def depth(self, layer: int) -> int:
        """Hidden Linear+GELU blocks of the network of ``layer`` (after the input projection)."""
        return sum(isinstance(m, LinearGELU) for m in self.nets[layer])
