"""Multi-GPU expert parallelism: all-to-all, load imbalance and replica balancing (SimPy).

Modules, one job each:

- inputs: :mod:`sim.cluster.config` (``conf/cluster``: GPUs, nodes, NVLink, InfiniBand, R),
  :mod:`sim.cluster.workloads` (synthetic and volatile traces), :mod:`sim.cluster.loads`
  (per-step routing counts with numpy);
- the model: :mod:`sim.cluster.alltoall` (dispatch and combine), :mod:`sim.cluster.rank_compute`
  (per-rank expert time), :mod:`sim.cluster.transfers` (replica copies on per-rank links that
  yield to the all-to-all), :mod:`sim.cluster.engine` (the SimPy loop over steps and layers,
  the decision stream, the replica pools);
- outputs: :mod:`sim.cluster.metrics`, :mod:`sim.cluster.timeline`, :mod:`sim.cluster.result`;
- running: :mod:`sim.cluster.simulate` (:func:`simulate_cluster`), :mod:`sim.cluster.hydra_run`
  (``moe-sim cluster=...``), :mod:`sim.cluster.compare` (``moe-sim experiment=probe``) and
  :mod:`sim.cluster.cli`.

Balance policies live in :mod:`policies.balancing` (``conf/balance``).
"""

from moe_offload_lab.sim.cluster.config import ClusterSpec, available_clusters, load_cluster
from moe_offload_lab.sim.cluster.result import ClusterResult
from moe_offload_lab.sim.cluster.simulate import simulate_cluster
from moe_offload_lab.sim.cluster.workloads import build_trace, volatile_trace

__all__ = ["ClusterResult", "ClusterSpec", "available_clusters", "build_trace", "load_cluster",
           "simulate_cluster", "volatile_trace"]
