"""Expert predictors: none, oracle (upper bound), static popularity, history, gate lookahead and
request similarity. Each module registers its class in :data:`policies.registry.PREDICTORS`."""

from policies.predictors.base import Predictor, register

__all__ = ["Predictor", "register"]
