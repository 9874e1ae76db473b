"""Per-expert load predictors for one layer of the current batch.

- ``oracle``: the batch's real routing of the layer (an upper bound, labelled ``is_oracle``);
- ``lookahead``: the trace's gate-lookahead columns (layer ``l``'s experts as predicted at layer
  ``l - d``), falling back to history where no column reaches the layer;
- ``history``: an exponential moving average of each layer's load share over past steps,
  scaled to the batch's token-expert pairs.
"""

from __future__ import annotations

import numpy as np
from moe_offload_lab.policies.balancing.base import BalanceContext, BalanceSetup

PREDICTOR_KINDS = ("oracle", "lookahead", "history")


class LoadHistory:
    """Moving average of per-expert load shares, one row per layer: ``[layers, experts]``."""

    def __init__(self, setup: BalanceSetup, decay: float) -> None:
        self.decay = decay
        self.top_k = setup.top_k
        self.share = np.full((setup.num_layers, setup.num_experts),
                             1.0 / setup.num_experts)  # [layers, experts]
        self.seen = np.zeros(setup.num_layers, dtype=bool)  # [layers]

    def update(self, layer: int, load: np.ndarray) -> None:
        """Fold one layer's observed load into the average (the first one replaces the prior)."""
        total = float(load.sum())
        if total <= 0:
            return
        fraction = load / total
        if self.seen[layer]:
            self.share[layer] = self.decay * self.share[layer] + (1 - self.decay) * fraction
        else:
            self.share[layer] = fraction
            self.seen[layer] = True

    def predict(self, layer: int, num_tokens: int) -> np.ndarray:
        """Expected pairs per expert for ``num_tokens`` tokens at ``layer``: ``[experts]``."""
        return self.share[layer] * (num_tokens * self.top_k)


class LoadPredictor:
    """One of :data:`PREDICTOR_KINDS`; history statistics are kept for every kind (fallback)."""

    def __init__(self, kind: str, distance: int, decay: float) -> None:
        self.kind = kind
        self.distance = distance
        self.decay = decay
        self.history: LoadHistory | None = None

    @property
    def is_oracle(self) -> bool:
        """True when predictions read the future (the batch's real routing)."""
        return self.kind == "oracle"

    def reset(self, setup: BalanceSetup) -> None:
        """Clear the statistics for a new run."""
        self.history = LoadHistory(setup, self.decay)

    def observe(self, layer: int, load: np.ndarray) -> None:
        """Record a layer's real load."""
        assert self.history is not None
        self.history.update(layer, load)

    def predict(self, ctx: BalanceContext) -> np.ndarray:
        """Predicted token-expert pairs per expert of ``ctx.layer``: ``[experts]`` float."""
        assert self.history is not None
        if self.kind == "oracle":
            return ctx.true_load.astype(np.float64)
        if self.kind == "lookahead":
            ahead = ctx.lookahead_load.get(self.distance)
            if ahead is not None:
                return ahead.astype(np.float64)
        return self.history.predict(ctx.layer, ctx.num_tokens)
