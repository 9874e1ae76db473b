"""Expert predictors: none, oracle (upper bound), static popularity, history, gate lookahead and
request similarity. Each module registers its class in :data:`policies.registry.PREDICTORS`."""

from policies.learned import predictor as _learned  # noqa: F401 - registers "learned"
from policies.predictors.base import Predictor, register

__all__ = ["Predictor", "register"]
