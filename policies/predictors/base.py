"""The predictor interface: scores for the experts the next ``h`` MoE layers will need."""

from __future__ import annotations

from abc import ABC, abstractmethod

from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.registry import PREDICTORS, NoParams
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.spec import ModelSpec

register = PREDICTORS.register


class Predictor(ABC):
    """Predicts, at each layer, which experts the batch will need at the next ``h`` layers.

    Oracle predictors (``is_oracle = True``) read the future from the trace and are upper
    bounds, never deployable. ``learns`` tells the composed policy whether :meth:`observe` does
    anything (it skips the call otherwise); ``reads_lookahead`` whether :meth:`predict` reads
    ``ctx.lookahead`` (engines build only what some component reads).
    """

    name = "predictor"
    is_oracle = False
    learns = False
    reads_lookahead = False
    reads_features = False  # True: reset or predict may read the trace's feature columns
    Params: type = NoParams
    decision_cost = DecisionCost("cpu", 0.0, 0.0)

    def __init__(self, params: object = None) -> None:
        self.params = params if params is not None else self.Params()
        self.spec: ModelSpec | None = None
        self.prediction = Prediction(1, 1, 1)

    def reset(self, spec: ModelSpec, horizon: int, trace: Trace | None = None,
              schedule: object = None, seed: int = 0) -> None:
        """Forget all state, size the :class:`Prediction` for ``horizon`` distances.

        Called by the policy's ``reset``. ``trace``/``schedule`` as in ``Policy.reset``.
        Subclasses extend it (calling ``super().reset``).
        """
        self.spec = spec
        self.num_layers = spec.num_moe_layers
        self.num_experts = spec.num_experts
        self.horizon = horizon
        self.prediction = Prediction(horizon, spec.num_moe_layers, spec.num_experts)

    def begin_step(self, ctx: LayerContext) -> None:  # noqa: B027 - optional hook
        """A step starts (``Policy.begin_step``). Default: nothing."""

    def observe(self, ctx: LayerContext) -> None:  # noqa: B027 - optional hook
        """The routing of ``ctx.layer`` is known (``Policy.on_layer``); learn from it.

        Only called when ``learns`` is True.
        """

    @abstractmethod
    def predict(self, ctx: LayerContext) -> Prediction:
        """Fill and return :attr:`prediction` for targets ``ctx.layer + 1 .. ctx.layer + h``.

        Called at most once per layer, after :meth:`observe` of the same layer, when a planner or
        a replacement rule needs predictions. Must start with ``prediction.begin(step, layer)``.
        """
