"""EPLB: DeepSeek's expert-parallel load balancer, periodic and history-driven.

The placement algorithm is DeepSeek's (:mod:`policies.balancing.eplb_algorithm`): from the
per-layer expert loads it chooses how many replicas each expert gets (``E + ranks x R`` physical
experts, ``base + R`` per GPU) and packs them onto GPUs, hierarchically (expert groups onto
nodes first) when the node count divides the number of expert groups, else globally.
``variant`` forces one or the other.

The loads are a moving average of the observed per-expert load (``decay`` per observation), as
the EPLB README suggests ("a moving average of historical statistics"). The first rebalance
happens after ``warmup`` steps, then every ``period`` steps; between rebalances the placement
stays put, so hot experts that shift catch it out. Every slot of every layer is resident
(``pool = "resident"``: ``(base + R) x layers`` experts per rank); a rebalance copies every slot
whose expert changed, and the layers wait for those copies (serving systems pause or slow down
while they shuffle weights). Tokens of a replicated expert are split evenly over its replicas,
as vLLM and SGLang dispatch them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moe_offload_lab.policies.balancing.base import (
    BalanceContext,
    BalancePolicy,
    BalanceSetup,
    Plan,
    StepBatch,
    round_robin_home,
)
from moe_offload_lab.policies.balancing.eplb_algorithm import rebalance_experts
from moe_offload_lab.policies.balancing.load_predictors import LoadHistory
from moe_offload_lab.policies.balancing.registry import BALANCERS
from moe_offload_lab.policies.registry import require
from moe_offload_lab.traces.errors import ConfigError

VARIANTS = ("auto", "hierarchical", "global")


@BALANCERS.register("eplb")
class EplbBalancer(BalancePolicy):
    """Periodic DeepSeek EPLB placement from a moving average of load (see module)."""

    pool = "resident"

    @dataclass(frozen=True)
    class Params:
        """``period``: steps between rebalances; ``warmup``: steps observed before the first;
        ``decay``: weight of the old average per observation; ``variant``: auto (hierarchical
        when nodes divide the expert groups) | hierarchical | global."""

        period: int = 1000
        warmup: int = 16
        decay: float = 0.9
        variant: str = "auto"

        def __post_init__(self) -> None:
            require(self.period >= 1, "period must be at least 1")
            require(self.warmup >= 1, "warmup must be at least 1")
            require(0.0 <= self.decay < 1.0, "decay must be in [0, 1)")
            require(self.variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)}")

    def __init__(self, params: Params | None = None) -> None:
        self.params = params or self.Params()
        self.setup: BalanceSetup | None = None
        self.table: np.ndarray | None = None  # [layers, ranks, S] placement of the last rebalance
        self.fresh = False

    def reset(self, setup: BalanceSetup) -> None:
        """Check the shape EPLB needs; start with an empty average and no replicas."""
        if setup.num_experts % setup.ranks:
            raise ConfigError(f"EPLB needs the {setup.num_experts} experts to divide evenly over "
                              f"{setup.ranks} ranks")
        nodes = setup.ranks // setup.ranks_per_node
        groups = setup.num_groups
        if self.params.variant == "hierarchical" and (groups % nodes or setup.num_experts
                                                      % groups):
            raise ConfigError(f"hierarchical EPLB needs {nodes} nodes to divide {groups} expert "
                              f"groups")
        if self.params.variant == "global" or groups % nodes or setup.num_experts % groups:
            groups, nodes = 1, 1
        self._groups, self._nodes = groups, nodes
        self.setup = setup
        self.history = LoadHistory(setup, self.params.decay)
        self.table = None
        self.fresh = False

    def home(self) -> np.ndarray:
        """Round-robin ranks ``[E]`` before the first rebalance."""
        assert self.setup is not None
        return round_robin_home(self.setup.num_experts, self.setup.ranks)

    def begin_step(self, batch: StepBatch) -> None:
        """On a rebalance step, run EPLB on the moving average of every layer's load."""
        setup = self.setup
        assert setup is not None
        p = self.params
        self.fresh = batch.step >= p.warmup and (batch.step - p.warmup) % p.period == 0
        if not self.fresh:
            return
        physical = setup.num_experts + setup.ranks * setup.redundant_slots
        phy2log, _, _ = rebalance_experts(self.history.share, physical, self._groups,
                                          self._nodes, setup.ranks)
        self.table = phy2log.reshape(setup.num_layers, setup.ranks, setup.slots)

    def plan(self, ctx: BalanceContext) -> Plan | None:
        """The last rebalance's placement on a rebalance step, else keep what is resident."""
        if not self.fresh or self.table is None:
            return None
        return Plan(self.table[ctx.layer])

    def observe(self, step: int, layer: int, load: np.ndarray) -> None:
        """Fold the layer's load into the moving average."""
        self.history.update(layer, load)
