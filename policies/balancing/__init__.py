"""Expert placement and load balancing across the ranks of an expert-parallel cluster.

The cluster engine (``sim.cluster``) owns time, links and memory; a balance policy only decides
the placement of each layer's experts and its redundant slots, and the token share of each slot.
One module per job:

- :mod:`policies.balancing.base`: the contract (:class:`BalancePolicy`, :class:`BalanceSetup`,
  :class:`StepBatch`, :class:`BalanceContext`, :class:`Plan`), its call order and the pools;
- :mod:`policies.balancing.split`: how an expert's tokens are split over its slots (shared by
  the engine and the planners, so plans are judged by the rule that runs them);
- :mod:`policies.balancing.planners`: PROBE's window-constrained greedy (compiled by numba, the
  Python function kept as its reference);
- :mod:`policies.balancing.eplb_algorithm`: DeepSeek's EPLB algorithm (hierarchical and global);
- :mod:`policies.balancing.load_predictors`: gate-prior, learned, history and oracle load
  predictors; :mod:`policies.balancing.learned_load`: PROBE's learned lookahead predictor
  (a ``probe`` checkpoint, ``prior: lookahead``) and its training;
- :mod:`policies.balancing.static`, :mod:`policies.balancing.eplb`,
  :mod:`policies.balancing.probe`: the registered policies;
- :mod:`policies.balancing.registry`: the ``BALANCERS`` registry and ``conf/balance`` loading.

This package never imports ``sim``; torch and numba load only when a learned predictor or the
compiled planner is first used.
"""

from moe_offload_lab.policies.balancing.base import BalanceContext, BalancePolicy, BalanceSetup
from moe_offload_lab.policies.balancing.registry import (
           BALANCERS,
           available_balancers,
           load_balancer,
)

__all__ = ["BALANCERS", "BalanceContext", "BalancePolicy", "BalanceSetup",
           "available_balancers", "load_balancer"]
