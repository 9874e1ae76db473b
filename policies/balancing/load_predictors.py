"""Per-expert load predictors for one layer of the current batch.

- ``gate``: PROBE's gate prior. For target layer ``t`` it counts the experts that layer ``t``'s
  real router picks from layer ``t - d``'s hidden state (the trace's lookahead column at distance
  ``d``: the next gate applied to the current hidden state);
- ``learned``: PROBE's gate-initialised lookahead predictor, a ``probe`` checkpoint
  (:mod:`policies.learned.models.gate_lookahead`, ``prior: lookahead``): the gate prior as
  logits plus a trained residual MLP on the hidden-state features; the predicted load is the sum
  over the batch's tokens of each expert's probability;
- ``history``: an exponential moving average of each layer's load share over past steps,
  scaled to the batch's token-expert pairs;
- ``oracle``: the batch's real routing of the layer (an upper bound, labelled ``is_oracle``).

Layers no lookahead column reaches (``t < d``: layer 0 at distance 1) use the history.
``gate`` and ``learned`` refuse, at reset, a trace without the lookahead distance they read
(``BalanceSetup.has_lookahead``), and ``learned`` one without the features its checkpoint was
trained on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from moe_offload_lab.policies.balancing.base import BalanceContext, BalanceSetup, StepBatch
from moe_offload_lab.traces.errors import ConfigError

PREDICTOR_KINDS = ("gate", "learned", "history", "oracle")


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

    def __init__(self, kind: str, distance: int, decay: float, checkpoint: str = "") -> None:
        if kind == "learned" and not checkpoint:
            raise ConfigError("predictor 'learned' needs checkpoint: PATH (a probe model "
                              "trained with prior: lookahead)")
        self.kind = kind
        self.distance = distance
        self.decay = decay
        self.checkpoint = checkpoint
        self.history: LoadHistory | None = None
        self.model: Any = None  # learned: numpy weights of the checkpoint
        self.step_load: np.ndarray | None = None  # [layers, experts] this step's prediction

    @property
    def is_oracle(self) -> bool:
        """True when predictions read the future (the batch's real routing)."""
        return self.kind == "oracle"

    def reset(self, setup: BalanceSetup) -> None:
        """Clear the statistics; check the trace carries what the predictor reads."""
        self.history = LoadHistory(setup, self.decay)
        if self.kind in ("gate", "learned") and self.distance not in setup.has_lookahead:
            have = ", ".join(map(str, setup.has_lookahead)) or "none"
            raise ConfigError(f"load predictor {self.kind!r} reads the trace's gate lookahead at "
                              f"distance {self.distance}; the trace has distances: {have} "
                              f"(choose predictor: history, or a trace with lookahead columns)")
        if self.kind == "learned":
            from moe_offload_lab.policies.balancing.learned_load import LearnedLoad

            self.model = LearnedLoad.load(self.checkpoint, setup, self.distance)

    def begin_step(self, batch: StepBatch) -> None:
        """Predict every layer of the step at once (each from its own source layer)."""
        if self.kind == "gate":
            self.step_load = batch.lookahead_load[self.distance].astype(np.float64)
        elif self.kind == "learned":
            self.step_load = self.model.expected_load(batch)
        else:
            self.step_load = None

    def observe(self, layer: int, load: np.ndarray) -> None:
        """Record a layer's real load."""
        assert self.history is not None
        self.history.update(layer, load)

    def predict(self, ctx: BalanceContext) -> np.ndarray:
        """Predicted token-expert pairs per expert of ``ctx.layer``: ``[experts]`` float."""
        assert self.history is not None
        if self.kind == "oracle":
            return ctx.true_load.astype(np.float64)
        if self.step_load is not None and ctx.layer >= self.distance:
            return self.step_load[ctx.layer]
        return self.history.predict(ctx.layer, ctx.num_tokens)
