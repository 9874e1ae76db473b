"""The admission interface."""

from __future__ import annotations

from abc import ABC, abstractmethod

from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.registry import ADMISSIONS, NoParams
from moe_offload_lab.traces.spec import ModelSpec

register = ADMISSIONS.register


class Admission(ABC):
    """Decides whether a demand-fetched expert is cached (True) or only streamed (False).

    ``observes`` tells the composed policy to call :meth:`on_access` at every layer.
    """

    name = "admission"
    observes = False
    Params: type = NoParams
    decision_cost = DecisionCost("cpu", 0.0, 0.0)

    def __init__(self, params: object = None) -> None:
        self.params = params if params is not None else self.Params()

    def reset(self, spec: ModelSpec, capacity_slots: int) -> None:  # noqa: B027 - optional
        """Forget all state."""

    def on_access(self, ctx: LayerContext) -> None:  # noqa: B027 - optional hook
        """The batch uses ``ctx.keys`` (only called when ``observes``)."""

    @abstractmethod
    def admit(self, key: int, ctx: LayerContext) -> bool:
        """True to cache the fetched expert, False to stream it (``Policy.admit``)."""
