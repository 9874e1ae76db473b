"""The ``learned`` predictor: a ``moe-train`` checkpoint behind the Predictor interface.

``{name: learned, checkpoint: PATH}`` (relative paths: the working directory, then the project
root), or ``checkpoint: auto`` with a training recipe (``train_predictor``, ``train_source``,
``train_tokens``, ``train_seed``, ``train_overrides``): the model for the run's shape is then
trained on first use and cached (:mod:`policies.learned.autotrain`), so the policy fits every
model. At each layer it builds the model's input for the batch - the tokens' experts at the last
``c`` layers (kept from :meth:`observe` during the step) or ``trace.features[ctx.rows, layer]``
from the trace given in ``reset`` - runs the model (torch, inference mode) and fills the
Prediction with every expert scoring at least ``min_score``, best first, per distance. The batch
needs an expert with ``1 - prod(1 - p_token)`` (``union: noisy-or``) or ``max p_token``.
Distances whose target lies in the next step (wrap-around) or beyond the model's horizon
predict nothing.

Its :attr:`decision_cost` is the one measured when the checkpoint was written (``cost`` in the
metadata, see :mod:`policies.learned.timing`): ``where: cpu`` uses the CPU figures; ``where: gpu``
the CUDA figures when the checkpoint has them, else the CPU figures (an assumption, stated in the
metadata-less case by the policy's description). This module loads torch only when a learned
predictor is built, so the policy registry stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.predictors.base import Predictor, register
from moe_offload_lab.policies.registry import require
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec


def cost_from_meta(meta: dict[str, Any], where: str = "") -> DecisionCost:
    """The DecisionCost declared by checkpoint metadata (zero when it has no measurement)."""
    cost = meta.get("cost") or {}
    where = where or cost.get("where", "cpu")
    figures = cost.get("cuda") if where == "gpu" and cost.get("cuda") else cost.get("cpu")
    if not figures:
        return DecisionCost(where, 0.0, 0.0)
    return DecisionCost(where, float(figures["fixed_s"]), float(figures["per_token_s"]))


def _require_torch() -> None:
    """A learned predictor runs a torch model: without torch (``pip install -e .`` has no
    extras) say so in one line when the policy is built, before any run starts."""
    import importlib.util

    try:
        found = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError("the learned predictor needs torch, which is not installed: install "
                          "the extra, pip install -c constraints.txt -e '.[learned]'")


@register("learned")
class LearnedPredictor(Predictor):
    """A trained predictor network (see module docstring)."""

    reads_features = True  # feature models, and auto-training on the replayed trace

    @dataclass(frozen=True)
    class Params:
        """``checkpoint``: a ``moe-train`` ``.pt`` file (its ``.json`` beside it), or ``auto``
        (train on first use with the ``train_*`` recipe, see
        :class:`~policies.learned.autotrain.Recipe`); ``where``:
        cpu | gpu ('' = as measured); ``union``: noisy-or | max; ``min_score``: drop experts
        below it; ``max_candidates``: keep at most this many per distance (0: all);
        ``device``: cpu | cuda; ``threads``: torch intra-op threads (0: leave as is)."""

        checkpoint: str = ""
        train_predictor: str = "history-transformer"
        train_source: str = "auto"
        train_tokens: int = 4000
        train_seed: int = 90001
        train_overrides: tuple[str, ...] = ()
        where: str = ""
        union: str = "noisy-or"
        min_score: float = 0.01
        max_candidates: int = 0
        device: str = "cpu"
        threads: int = 0

        def __post_init__(self) -> None:
            require(self.where in ("", "cpu", "gpu"), "where must be cpu or gpu")
            require(self.union in ("noisy-or", "max"), "union must be noisy-or or max")
            require(0.0 <= self.min_score <= 1.0, "min_score must lie in [0, 1]")
            require(self.max_candidates >= 0, "max_candidates must not be negative")
            require(self.threads >= 0, "threads must not be negative")
            require(self.train_source in ("auto", "preset", "trace"),
                    "train_source must be auto, preset or trace")
            require(self.train_tokens >= 1, "train_tokens must be positive")

    def __init__(self, params: object = None, model: Any = None,
                 meta: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        p = self.params
        _require_torch()
        self.auto = p.checkpoint == "auto" and model is None
        self.recipe = None
        if self.auto:
            from moe_offload_lab.policies.learned.autotrain import Recipe

            self.recipe = Recipe(p.train_predictor, p.train_source, p.train_tokens,
                                 p.train_seed, tuple(p.train_overrides))
            self._bind(None, {})
            return
        if model is None:
            if not p.checkpoint:
                raise ConfigError("predictor 'learned' needs checkpoint: PATH (a moe-train .pt) "
                                  "or checkpoint: auto")
            from moe_offload_lab.policies.learned.checkpoint import load

            model, meta = load(p.checkpoint)
        self._bind(model, meta or {})

    def _bind(self, model: Any, meta: dict[str, Any]) -> None:
        """Use ``model`` (None: not yet obtained, ``checkpoint: auto`` before ``reset``)."""
        p = self.params
        self.meta = meta
        self.model = model
        if model is None:
            self.runner = None
            self.learns = True  # decided at reset; observing costs nothing before a model exists
            self.decision_cost = DecisionCost(p.where or "cpu", 0.0, 0.0)
            return
        from moe_offload_lab.policies.learned.runner import Runner

        self.runner = Runner(model, p.device, p.union, p.min_score, p.max_candidates)
        self.learns = not model.uses_features
        self.decision_cost = cost_from_meta(self.meta, p.where)

    def reset(self, spec: ModelSpec, horizon: int, trace: Trace | None = None,
              schedule: object = None, seed: int = 0) -> None:
        """Obtain the model (``checkpoint: auto``: trained or loaded from the cache for
        ``spec``); check it fits ``spec`` (and the trace's features); clear the history."""
        super().reset(spec, horizon, trace, schedule, seed)
        if self.auto:
            from moe_offload_lab.policies.learned.autotrain import obtain

            model, meta = obtain(spec, trace, self.recipe)
            self._bind(model, meta)
        s = self.model.shape
        if (spec.num_moe_layers, spec.num_experts, spec.top_k) != \
                (s.num_layers, s.num_experts, s.top_k):
            raise ConfigError(f"learned predictor {self.model.kind!r} was trained for "
                              f"{s.num_layers} MoE layers x {s.num_experts} experts top-"
                              f"{s.top_k}, not {spec.name} ({spec.num_moe_layers} x "
                              f"{spec.num_experts} top-{spec.top_k})")
        if self.params.threads:
            import torch

            torch.set_num_threads(self.params.threads)
        self._features: np.ndarray | None = None
        if self.model.uses_features:
            if trace is None or trace.features is None:
                raise ConfigError(f"learned predictor {self.model.kind!r} reads hidden-state "
                                  f"features: it needs a replayed trace with features")
            if trace.features.shape[2] != s.feature_dim:
                raise ConfigError(f"learned predictor {self.model.kind!r} expects "
                                  f"{s.feature_dim} features per layer, the trace has "
                                  f"{trace.features.shape[2]}")
            self._features = trace.features
        c, k = s.context, spec.top_k
        self._pad = c - 1
        # rows 0..c-2: padding (E); row c-1+l: the batch's experts at layer l this step
        self._hist = np.full((c - 1 + spec.num_moe_layers, 1, k), spec.num_experts,
                             dtype=np.int64)  # [c-1+L, B, k]

    def observe(self, ctx: LayerContext) -> None:
        """Keep the batch's routing at ``ctx.layer`` for the history input."""
        routing = ctx.routing
        if routing is None:
            return
        batch = routing.shape[0]
        if self._hist.shape[1] < batch:
            grown = np.full((self._hist.shape[0], batch, self._hist.shape[2]), self.num_experts,
                            dtype=np.int64)
            self._hist = grown
        self._hist[self._pad + ctx.layer, :batch] = routing

    def predict(self, ctx: LayerContext) -> Prediction:
        """Run the model on the batch's inputs at ``ctx.layer``."""
        pred = self.prediction
        pred.begin(ctx.step, ctx.layer)
        layer, batch = ctx.layer, ctx.num_tokens
        if batch == 0:
            return pred
        if self._features is not None:
            if ctx.rows is None:
                return pred
            return self.runner.predict(pred, layer, None, self._features[ctx.rows, layer],
                                       self.horizon)
        c = self.model.shape.context
        window = self._hist[layer:layer + c, :batch].transpose(1, 0, 2)  # [B, c, k]
        return self.runner.predict(pred, layer, np.ascontiguousarray(window), None, self.horizon)
