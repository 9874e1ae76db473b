"""PROBE-style gate-initialised lookahead: a frozen router prior plus a zero-initialised
residual MLP on the source layer's hidden state.

For source layer ``l`` and distance ``d`` the logits are
``scale[l, d] * ([x, 1] @ prior[l, d]) + bias[l, d] + residual_l(encode(x))[d]`` where ``x`` is the
raw feature vector of layer ``l``:

- **real router weights** (``set_router_weights(W)``, ``W`` [L, E, F], only meaningful when the
  features ARE the hidden state): ``prior[l, d] = W[l + d].T`` - layer ``l + d``'s router applied
  to layer ``l``'s hidden state, as in PROBE; scale 1, bias 0 at start;
- **otherwise** (the usual case: trace features are projections of the hidden state, so no
  router can be applied to them) the prior is a least-squares (ridge) fit of layer ``l + d``'s
  routing multi-hot on ``[x, 1]`` over the training examples, i.e. the best LINEAR "router" on
  these features; scale 4 and bias -2 map its ~probability output to logits at start.

The prior matrix is frozen (a buffer). The scalar ``scale``/``bias`` per (layer, distance) are
learned - router logits live on a softmax scale, not a sigmoid one - and the residual MLP's last
layer starts at zero, so training starts from the prior's exact predictions.
"""

from __future__ import annotations

import numpy as np
import torch
from moe_offload_lab.policies.learned.features import FeatureEncoder
from moe_offload_lab.policies.learned.models.base import LearnedModel, Shape, register_model
from moe_offload_lab.traces.errors import ConfigError
from torch import nn


@register_model
class GateLookahead(LearnedModel):
    """Frozen (router or least-squares) prior + zero-initialised residual MLP."""

    kind = "probe"
    inputs = "features"
    hyper = {"hidden": 32, "ridge": 1e-3, "prior": "least-squares"}

    def __init__(self, shape: Shape, **hp: object) -> None:
        super().__init__(shape, **hp)
        n_layers, h, n_exp, f = (shape.num_layers, shape.horizon, shape.num_experts,
                                 shape.feature_dim)
        self.encoder = FeatureEncoder(n_layers, f)
        self.register_buffer("prior", torch.zeros(n_layers, h, f + 1, n_exp))  # [L, h, F+1, E]
        self.scale = nn.Parameter(torch.full((n_layers, h), 4.0))  # [L, h]
        self.bias = nn.Parameter(torch.full((n_layers, h), -2.0))  # [L, h]
        width = int(self.hp["hidden"])
        self.residual = nn.ModuleList()
        for _ in range(n_layers):
            last = nn.Linear(width, self.out_width())
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.residual.append(nn.Sequential(nn.Linear(f, width), nn.GELU(), last))
        self._router: np.ndarray | None = None

    def set_router_weights(self, weights: np.ndarray) -> None:
        """Use real router weights [L, E, F] (router of layer m applied to F-wide hidden states)
        as the prior; call before :meth:`fit_data`."""
        s = self.shape
        if weights.shape != (s.num_layers, s.num_experts, s.feature_dim):
            raise ConfigError(f"router weights must have shape [L, E, F] = "
                              f"{[s.num_layers, s.num_experts, s.feature_dim]}, got "
                              f"{list(weights.shape)}")
        self._router = weights.astype(np.float32)
        self.hp["prior"] = "router"

    def fit_data(self, layer: np.ndarray, history: np.ndarray, features: np.ndarray | None,
                 targets: np.ndarray, mask: np.ndarray) -> None:
        assert features is not None
        self.encoder.fit(features, layer)
        n_layers, h = self.shape.num_layers, self.shape.horizon
        with torch.no_grad():
            for src in range(n_layers):
                x = features[layer == src].astype(np.float64)  # [n, F]
                xa = np.concatenate([x, np.ones((len(x), 1))], 1)  # [n, F+1]
                gram = xa.T @ xa + float(self.hp["ridge"]) * max(len(x), 1) * np.eye(xa.shape[1])
                for d in range(1, h + 1):
                    if src + d >= n_layers:
                        continue
                    if self._router is not None:
                        w = np.concatenate([self._router[src + d].T,
                                            np.zeros((1, self.shape.num_experts))], 0)
                        self.scale[src, d - 1] = 1.0
                        self.bias[src, d - 1] = 0.0
                    else:
                        y = targets[layer == src, d - 1].astype(np.float64)  # [n, E]
                        w = np.linalg.solve(gram, xa.T @ y)  # [F+1, E]
                    self.prior[src, d - 1] = torch.as_tensor(w, dtype=torch.float32)

    def forward(self, layer: int, history: torch.Tensor,
                features: torch.Tensor | None) -> torch.Tensor:
        assert features is not None
        ones = torch.ones(features.shape[0], 1, device=features.device)
        xa = torch.cat([features, ones], 1)  # [B, F+1]
        prior = torch.einsum("bf,hfe->bhe", xa, self.prior[layer])  # [B, h, E]
        prior = prior * self.scale[layer][None, :, None] + self.bias[layer][None, :, None]
        x = self.encoder(features, layer)  # [B, F]
        residual = self.residual[layer](x).view(-1, self.shape.horizon, self.shape.num_experts)
        return prior + residual
