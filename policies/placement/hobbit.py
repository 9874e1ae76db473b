"""HOBBIT's token-level dynamic expert loading (Tang et al., arXiv 2411.01433).

On a cache miss HOBBIT asks how much the missing expert matters to the tokens routed to it and,
when it matters little, loads a low-precision version of it instead of the full one: fewer bytes
cross the link, the layer stalls less, and the accuracy cost is one low-precision expert
computation. Important experts load at full precision.

Here an expert's importance at a layer is its largest gate weight over the batch's tokens routed
to it (an expert one token depends on is loaded in full for the whole batch), in units of the
uniform share ``1 / top_k`` (so one threshold reads the same on a top-2 and a top-8 model: 0.5
is a gate weight of 0.25 on Mixtral, 0.0625 on a top-8 model). Below ``threshold`` the placement
answers ``"gpu-lowbits"`` (:data:`policies.base.LOWBITS`): the engine
copies ``low_fraction`` of the expert's bytes into a slot, and the key then computes from the
low-precision copy while it stays resident; the run summary counts those computations
(``lowbit_expert_computes``). Without gate weights (a context that has none) every expert loads
in full.

What is ours, not the paper's: the batch rule (largest gate weight), the scale (the uniform
share), the defaults (``threshold`` 0.5, ``low_fraction`` 0.25: an int4 copy of a 16-bit expert),
and no "skip the expert" tier. The GPU computes a low-precision expert in the time of a
full one (no dequantization cost, no faster kernel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from moe_offload_lab.policies.base import GPU, LOWBITS
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import DecisionCost
from moe_offload_lab.policies.placement.base import PlacementRule, register
from moe_offload_lab.policies.registry import require


def expert_importance(ctx: LayerContext) -> dict[int, float]:
    """Per expert routed at ``ctx.layer``: its largest gate weight over the batch's tokens
    (empty when the context carries no gate weights)."""
    routing, gates = ctx.routing, ctx.gates
    if routing is None or gates is None:
        return {}
    best: dict[int, float] = {}
    for expert, weight in zip(routing.ravel().tolist(), gates.ravel().tolist(), strict=True):
        if weight > best.get(expert, -1.0):
            best[expert] = weight
    return best


@register("hobbit")
class Hobbit(PlacementRule):
    """Load a low-precision copy of a missing expert whose gate weight is below ``threshold``;
    important experts load in full (see the module docstring)."""

    decision_cost = DecisionCost("cpu", 0.5e-6, 0.05e-6)

    @dataclass(frozen=True)
    class Params:
        """``threshold``: gate weight, in units of ``1 / top_k``, below which a missing expert is
        unimportant (its largest over the batch's tokens); ``low_fraction``: bytes of its
        low-precision copy over the full expert's (0.25: int4 of a 16-bit expert)."""

        threshold: float = 0.5
        low_fraction: float = 0.25

        def __post_init__(self) -> None:
            require(self.threshold >= 0.0, "threshold must be >= 0")
            require(0.0 < self.low_fraction <= 1.0, "low_fraction must lie in (0, 1]")

    @property
    def lowbit_fraction(self) -> float:  # type: ignore[override]
        """``Policy.lowbit_fraction``: the low-precision copy's share of the expert's bytes."""
        return self.params.low_fraction

    def place(self, ctx: LayerContext, missing: Sequence[int]) -> Mapping[int, str]:
        """``"gpu-lowbits"`` for missing experts below the threshold, ``"gpu"`` for the rest."""
        out = self._out
        out.clear()
        importance = expert_importance(ctx)
        threshold, n_experts = self.params.threshold / ctx.top_k, ctx.num_experts
        for key in missing:
            weight = importance.get(key % n_experts)
            out[key] = LOWBITS if weight is not None and weight < threshold else GPU
        return out
