"""Static popularity: each layer's experts ranked by how often they were used.

Learned from a training trace (``source: file``), from the first ``warmup_tokens`` tokens of the
run itself (``source: warmup``, then frozen), or from the whole replayed trace
(``source: replay`` - this reads the future and is therefore an ORACLE, an upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.needs import step_counts
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.predictors.base import Predictor, register
from moe_offload_lab.policies.registry import require
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

_SOURCES = ("warmup", "file", "replay")


@register("popularity")
class PopularityPredictor(Predictor):
    """Per-layer expert frequency, independent of the current routing.

    A token uses expert ``e`` of layer ``l`` with frequency ``p[l, e]`` (tokens that used it over
    tokens seen); a batch of ``B`` tokens is predicted to need it with ``1 - (1 - p) ** B``.
    During warm-up nothing is predicted.
    """

    decision_cost = DecisionCost("cpu", 1.5e-06, 0.0)

    @dataclass(frozen=True)
    class Params:
        """``source``: warmup | file | replay; ``warmup_tokens`` for warmup; ``train_trace``
        path for file."""

        source: str = "warmup"
        warmup_tokens: int = 256
        train_trace: str | None = None

        def __post_init__(self) -> None:
            require(self.source in _SOURCES, f"source must be one of {', '.join(_SOURCES)}")
            require(self.warmup_tokens >= 1, "warmup_tokens must be at least 1")
            require(self.source != "file" or bool(self.train_trace),
                    "source 'file' needs train_trace (a trace file path)")

    def __init__(self, params: object = None) -> None:
        super().__init__(params)
        self.is_oracle = self.params.source == "replay"
        self.learns = self.params.source == "warmup"

    def reset(self, spec: ModelSpec, horizon: int, trace: Trace | None = None,
              schedule: object = None, seed: int = 0) -> None:
        """Load or zero the counts."""
        super().reset(spec, horizon, trace, schedule, seed)
        n_layers, n_experts = spec.num_moe_layers, spec.num_experts
        self._counts = np.zeros((n_layers, n_experts), dtype=np.int64)  # [L, E]
        self._counts_rows = [[0] * n_experts for _ in range(n_layers)]  # warm-up counts, [L][E]
        self._tokens = 0
        self._frozen = False
        self._by_batch: dict[int, list[tuple[float, ...]]] = {}
        self._ranked: list[list[int]] = [[] for _ in range(n_layers)]
        source = self.params.source
        if source == "file":
            train = Trace.load(self.params.train_trace, columns="routing")
            if (train.spec.num_moe_layers, train.spec.num_experts) != (n_layers, n_experts):
                raise ConfigError(f"popularity train_trace {self.params.train_trace}: model "
                                  f"{train.spec.name!r} has a different shape than {spec.name!r}")
            self._freeze(step_counts(train.expert_ids, n_experts), train.num_tokens)
        elif source == "replay":
            if trace is None:
                raise ConfigError("popularity source 'replay' (an oracle) needs the trace")
            self._freeze(step_counts(trace.expert_ids, n_experts), trace.num_tokens)

    def _freeze(self, counts: np.ndarray, tokens: int) -> None:
        self._counts = counts.astype(np.int64)
        self._tokens = max(int(tokens), 1)
        self._freq = self._counts / self._tokens  # [L, E]
        self._ranked = []
        self._order = []
        for row in self._counts:
            order = np.argsort(-row, kind="stable")
            order = order[row[order] > 0]
            self._order.append(order)
            self._ranked.append(order.tolist())
        self._by_batch.clear()
        self._frozen = True

    def _confidence(self, batch: int) -> list[tuple[float, ...]]:
        table = self._by_batch.get(batch)
        if table is None:
            table = [tuple((1.0 - (1.0 - self._freq[layer, order]) ** batch).tolist())
                     for layer, order in enumerate(self._order)]
            self._by_batch[batch] = table
        return table

    def observe(self, ctx: LayerContext) -> None:
        """During warm-up, count the layer's experts; freeze once enough tokens were seen."""
        if self._frozen:
            return
        row = self._counts_rows[ctx.layer]
        for expert, tokens in zip(ctx.experts, ctx.tokens_per_expert, strict=True):
            row[expert] += tokens
        if ctx.layer == self.num_layers - 1:
            self._tokens += ctx.num_tokens
            if self._tokens >= self.params.warmup_tokens:
                self._freeze(np.array(self._counts_rows, dtype=np.int64), self._tokens)

    def predict(self, ctx: LayerContext) -> Prediction:
        """The frozen ranking of each target layer."""
        pred = self.prediction
        pred.begin(ctx.step, ctx.layer)
        if not self._frozen:
            return pred
        table = self._confidence(ctx.num_tokens)
        ranked, confidence = pred.ranked, pred.confidence
        for i, target in enumerate(pred.targets):
            ranked[i] = self._ranked[target]
            confidence[i] = table[target]
        return pred
