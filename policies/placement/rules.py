"""Placement rules: always on the GPU, or Fiddler's CPU-versus-transfer comparison."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from moe_offload_lab.policies.base import CPU, GPU
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel, DecisionCost
from moe_offload_lab.policies.placement.base import PlacementRule, register
from moe_offload_lab.traces.spec import ModelSpec


@register("gpu")
class AlwaysGPU(PlacementRule):
    """Every missing expert is fetched and run on the GPU."""

    decision_cost = DecisionCost("cpu", 0.2e-6, 0.01e-6)

    def place(self, ctx: LayerContext, missing: Sequence[int]) -> Mapping[int, str]:
        """All GPU."""
        out = self._out
        out.clear()
        for key in missing:
            out[key] = GPU
        return out


@register("fiddler")
class Fiddler(PlacementRule):
    """Fiddler's rule: run a missing expert on the CPU when that is faster than fetching it.

    CPU when ``cpu_expert_s(t) < transfer_s + gpu_expert_s(t)`` for the ``t`` tokens routed to
    it, from the cost model. Both sides are linear in ``t``, so the rule reduces to a token
    threshold computed once per run.
    """

    decision_cost = DecisionCost("cpu", 0.5e-6, 0.02e-6)

    def reset(self, spec: ModelSpec, cost_model: CostModel) -> None:
        """Solve for the largest token count the CPU still wins at."""
        super().reset(spec, cost_model)
        cm = cost_model
        gap_fixed = cm.transfer_s() + cm.gpu_expert_fixed_s - cm.cpu_expert_fixed_s
        gap_per_token = cm.cpu_expert_s_per_token - cm.gpu_expert_s_per_token
        if gap_fixed <= 0:
            self.cpu_below_tokens = 0.0  # fetching always wins
        elif gap_per_token <= 0:
            self.cpu_below_tokens = math.inf  # the CPU always wins
        else:
            self.cpu_below_tokens = gap_fixed / gap_per_token  # CPU iff tokens < this

    def place(self, ctx: LayerContext, missing: Sequence[int]) -> Mapping[int, str]:
        """CPU for experts with few tokens, GPU for the rest."""
        out = self._out
        out.clear()
        limit = self.cpu_below_tokens
        if ctx.num_tokens < limit:  # every expert has at most num_tokens tokens
            for key in missing:
                out[key] = CPU
            return out
        tokens = dict(zip(ctx.keys, ctx.tokens_per_expert, strict=True))
        for key in missing:
            out[key] = CPU if tokens.get(key, 0) < limit else GPU
        return out
