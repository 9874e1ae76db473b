"""The predictor networks; :func:`build_model` makes one by kind (see :data:`MODELS`)."""

from moe_offload_lab.policies.learned.models.base import MODELS, LearnedModel, Shape, build_model

__all__ = ["MODELS", "LearnedModel", "Shape", "build_model"]
