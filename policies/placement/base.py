"""The placement interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel, DecisionCost
from moe_offload_lab.policies.registry import PLACEMENTS, NoParams
from moe_offload_lab.traces.spec import ModelSpec

register = PLACEMENTS.register


class PlacementRule(ABC):
    """Decides, per missing expert of the current layer, whether to fetch it or run it on the
    CPU."""

    name = "placement"
    Params: type = NoParams
    decision_cost = DecisionCost("cpu", 0.0, 0.0)
    #: ``Policy.lowbit_fraction``: bytes of the low-precision copies this rule asks for with
    #: "gpu-lowbits" (policies.base.LOWBITS), over an expert's; 1.0 for rules that never do.
    lowbit_fraction = 1.0

    def __init__(self, params: object = None) -> None:
        self.params = params if params is not None else self.Params()
        self._out: dict[int, str] = {}

    def reset(self, spec: ModelSpec, cost_model: CostModel) -> None:
        """Prepare for a run (``Policy.reset``)."""
        self.spec = spec
        self.cost_model = cost_model
        self._out = {}

    @abstractmethod
    def place(self, ctx: LayerContext, missing: Sequence[int]) -> Mapping[int, str]:
        """``Policy.place``: a reused mapping of every missing key to ``"gpu"``, ``"cpu"`` or
        ``"gpu-lowbits"``."""
