"""Static round-robin placement: expert ``e`` lives on rank ``e % ranks``, no replicas."""

from __future__ import annotations

import numpy as np
from moe_offload_lab.policies.balancing.base import (
    BalanceContext,
    BalancePolicy,
    BalanceSetup,
    Plan,
    StepBatch,
    round_robin_home,
)
from moe_offload_lab.policies.balancing.registry import BALANCERS
from moe_offload_lab.policies.registry import NoParams


@BALANCERS.register("static")
class StaticRoundRobin(BalancePolicy):
    """The baseline of expert parallelism: a fixed placement, redundant slots left empty."""

    Params = NoParams

    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params or NoParams()
        self.setup: BalanceSetup | None = None

    def reset(self, setup: BalanceSetup) -> None:
        """Remember the cluster shape."""
        self.setup = setup

    def home(self) -> np.ndarray:
        """Round-robin primary ranks ``[E]``."""
        assert self.setup is not None
        return round_robin_home(self.setup.num_experts, self.setup.ranks)

    def begin_step(self, batch: StepBatch) -> None:
        """Nothing to decide."""

    def plan(self, ctx: BalanceContext) -> Plan | None:
        """Never replicates."""
        return None

    def observe(self, step: int, layer: int, load: np.ndarray) -> None:
        """Keeps no statistics."""
