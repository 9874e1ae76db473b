"""The null predictor: predicts nothing (on-demand policies)."""

from __future__ import annotations

from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.predictors.base import Predictor, register


@register("none")
class NoPredictor(Predictor):
    """Every score is zero; planners relying on it fetch nothing ahead of need."""

    def predict(self, ctx: LayerContext) -> Prediction:
        """Empty prediction for the next ``h`` layers."""
        self.prediction.begin(ctx.step, ctx.layer)
        return self.prediction
