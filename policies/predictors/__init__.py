"""Expert predictors: none, oracle (upper bound), static popularity, history, gate lookahead and
request similarity. Each module registers its class in :data:`policies.registry.PREDICTORS`."""

from moe_offload_lab.policies.learned import predictor as _learned  # noqa: F401 - registers "learned"
from moe_offload_lab.policies.predictors.base import Predictor, register

__all__ = ["Predictor", "register"]
