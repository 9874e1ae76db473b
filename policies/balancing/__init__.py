"""Expert placement and load balancing across the ranks of an expert-parallel cluster.

The cluster engine (``sim.cluster``) owns time, links and memory; a balance policy only decides
where the redundant expert slots of each rank point. One module per job:

- :mod:`policies.balancing.base`: the contract (:class:`BalancePolicy`, :class:`BalanceSetup`,
  :class:`BalanceContext`) and its call order;
- :mod:`policies.balancing.split`: how a replicated expert's tokens are split over its copies
  (shared by the engine and the planners, so plans are judged by the rule that runs them);
- :mod:`policies.balancing.planners`: greedy replication planners over a per-expert load vector;
- :mod:`policies.balancing.load_predictors`: oracle, gate-lookahead and history load predictors;
- :mod:`policies.balancing.static`, :mod:`policies.balancing.eplb`,
  :mod:`policies.balancing.probe`: the registered policies;
- :mod:`policies.balancing.registry`: the ``BALANCERS`` registry and ``conf/balance`` loading.

This package never imports ``sim``.
"""

from moe_offload_lab.policies.balancing.base import BalanceContext, BalancePolicy, BalanceSetup
from moe_offload_lab.policies.balancing.registry import (
           BALANCERS,
           available_balancers,
           load_balancer,
)

__all__ = ["BALANCERS", "BalanceContext", "BalancePolicy", "BalanceSetup",
           "available_balancers", "load_balancer"]
