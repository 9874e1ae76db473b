"""The null predictor: predicts nothing (on-demand policies)."""

from __future__ import annotations

from policies.context import LayerContext
from policies.prediction import Prediction
from policies.predictors.base import Predictor, register


@register("none")
class NoPredictor(Predictor):
    """Every score is zero; planners relying on it fetch nothing ahead of need."""

    def predict(self, ctx: LayerContext) -> Prediction:
        """Empty prediction for the next ``h`` layers."""
        self.prediction.begin(ctx.step, ctx.layer)
        return self.prediction
