"""PROBE's gate-initialised lookahead predictor: a frozen router prior plus a zero-initialised
residual MLP on the source layer's hidden state.

For source layer ``l`` and distance ``d`` the logits are ``prior_l,d(x, ids) +
residual_l(encode(x))[d]`` where ``x`` is the raw feature vector of layer ``l``. The prior (the
``prior`` hyperparameter) is one of:

- ``lookahead`` (PROBE as the cluster balancer runs it): the top-k that layer ``l + d``'s real
  router picks from layer ``l``'s hidden state, as the trace's lookahead column records it, so
  the prior is ``bias[l, d] + scale[l, d] * [e in ids]``, with ``bias`` and ``scale`` initialised
  from the training data (the log-odds of a target expert outside and inside the picked set).
  The ids come in the ``history`` argument, ``[B, h, k]`` (``E`` or ``-1`` = none; see
  :func:`lookahead_examples`); calling the model without them is a ConfigError, so an offload
  policy (which passes features only) cannot misuse such a checkpoint;
- ``router`` (``set_router_weights(W)``, ``W`` [L, E, F], only meaningful when the features ARE
  the hidden state): ``[x, 1] @ prior[l, d]`` with ``prior[l, d] = W[l + d].T`` - layer
  ``l + d``'s router applied to layer ``l``'s hidden state; scale 1, bias 0 at start;
- ``least-squares`` (the default, when no router can be applied to the features): a ridge fit
  of layer ``l + d``'s routing multi-hot on ``[x, 1]`` over the training examples (the best
  linear "router" on these features); scale 4 and bias -2 map its ~probability output to logits.

The prior matrix is frozen (a buffer). ``scale``/``bias`` per (layer, distance) are learned, and
the residual MLP's last layer starts at zero, so training starts from the prior's predictions.
"""

from __future__ import annotations

import numpy as np
import torch
from moe_offload_lab.policies.learned.data import Examples
from moe_offload_lab.policies.learned.features import FeatureEncoder
from moe_offload_lab.policies.learned.models.base import LearnedModel, Shape, register_model
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from torch import nn

PRIORS = ("least-squares", "router", "lookahead")


@register_model
class GateLookahead(LearnedModel):
    """Frozen (lookahead, router or least-squares) prior + zero-initialised residual MLP."""

    kind = "probe"
    inputs = "features"
    hyper = {"hidden": 32, "ridge": 1e-3, "prior": "least-squares"}

    def __init__(self, shape: Shape, **hp: object) -> None:
        super().__init__(shape, **hp)
        if self.hp["prior"] not in PRIORS:
            raise ConfigError(f"predictor 'probe': prior must be one of {', '.join(PRIORS)}, "
                              f"got {self.hp['prior']!r}")
        n_layers, h, n_exp, f = (shape.num_layers, shape.horizon, shape.num_experts,
                                 shape.feature_dim)
        self.encoder = FeatureEncoder(n_layers, f)
        width = 0 if self.hp["prior"] == "lookahead" else f + 1
        self.register_buffer("prior", torch.zeros(n_layers, h, width, n_exp))  # [L, h, F+1, E]
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

    @property
    def reads_lookahead(self) -> bool:
        """True when the prior reads the trace's lookahead ids (``prior: lookahead``)."""
        return self.hp["prior"] == "lookahead"

    def set_router_weights(self, weights: np.ndarray) -> None:
        """Use real router weights [L, E, F] (router of layer m applied to F-wide hidden states)
        as the prior; call before :meth:`fit_data`."""
        s = self.shape
        if self.reads_lookahead:
            raise ConfigError("predictor 'probe': router weights and prior: lookahead exclude "
                              "each other")
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
        if self.reads_lookahead:
            self._fit_lookahead(layer, history, targets, mask)
            return
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

    def _fit_lookahead(self, layer: np.ndarray, ahead: np.ndarray, targets: np.ndarray,
                       mask: np.ndarray) -> None:
        """Initial bias (log-odds of a target outside the picked set) and scale (inside minus
        outside) per (source layer, distance), from the training examples."""
        picked = self._picked(torch.as_tensor(ahead)).numpy()  # [N, h, E]
        with torch.no_grad():
            for src in range(self.shape.num_layers):
                rows = layer == src
                for d in range(self.shape.horizon):
                    ok = mask[rows, d]  # [n]
                    if not ok.any():
                        continue
                    hit = picked[rows, d][ok]  # [n, E]
                    truth = targets[rows, d][ok]
                    p_in = (truth & hit).sum() + 1.0
                    p_in /= hit.sum() + 2.0
                    p_out = (truth & ~hit).sum() + 1.0
                    p_out /= (~hit).sum() + 2.0
                    logit_out = float(np.log(p_out / (1 - p_out)))
                    self.bias[src, d] = logit_out
                    self.scale[src, d] = float(np.log(p_in / (1 - p_in))) - logit_out

    def _picked(self, ahead: torch.Tensor) -> torch.Tensor:
        """``[B, h, k]`` ids -> ``[B, h, E]`` bool multi-hot (``-1`` and ``E`` mean none)."""
        n_exp = self.shape.num_experts
        ids = torch.where(ahead < 0, torch.full_like(ahead, n_exp), ahead).long()
        return nn.functional.one_hot(ids, n_exp + 1)[..., :n_exp].sum(2) > 0

    def forward(self, layer: int, history: torch.Tensor,
                features: torch.Tensor | None) -> torch.Tensor:
        assert features is not None
        h, n_exp = self.shape.horizon, self.shape.num_experts
        if self.reads_lookahead:
            if history is None:
                raise ConfigError("this probe checkpoint's prior reads the trace's lookahead ids "
                                  "(prior: lookahead): use it through the probe balancer "
                                  "(conf/balance/probe.yaml), not an offload policy")
            picked = self._picked(history).float()  # [B, h, E]
            prior = self.bias[layer][None, :, None] + self.scale[layer][None, :, None] * picked
        else:
            ones = torch.ones(features.shape[0], 1, device=features.device)
            xa = torch.cat([features, ones], 1)  # [B, F+1]
            prior = torch.einsum("bf,hfe->bhe", xa, self.prior[layer])  # [B, h, E]
            prior = prior * self.scale[layer][None, :, None] + self.bias[layer][None, :, None]
        x = self.encoder(features, layer)  # [B, F]
        return prior + self.residual[layer](x).view(-1, h, n_exp)


def lookahead_examples(trace: Trace, rows: np.ndarray | None, horizon: int) -> Examples:
    """Training examples for ``prior: lookahead``: like
    :func:`policies.learned.data.build_examples`, but ``history`` ``[N, h, k]`` holds the
    trace's lookahead ids at distances ``1..h`` of the source layer (``-1`` where a distance is
    missing or out of range)."""
    from moe_offload_lab.policies.learned.data import build_examples

    base = build_examples(trace, rows, 1, horizon)
    rows = np.arange(trace.num_tokens) if rows is None else np.asarray(rows, dtype=np.int64)
    k, n_layers = trace.spec.top_k, trace.spec.num_moe_layers
    ahead = np.full((len(rows), n_layers, horizon, k), -1, dtype=np.int64)  # [T, L, h, k]
    for d in range(1, horizon + 1):
        if d in trace.lookahead:
            ahead[:, :, d - 1] = trace.lookahead[d][rows]
    return Examples(base.layer, ahead.reshape(-1, horizon, k), base.features, base.targets,
                    base.mask, base.token)
