"""The SimPy discrete-event model of offloaded MoE inference (``moe-sim``).

Modules, one job each:

- inputs: :mod:`sim.hardware` (profiles from ``conf/hardware``), :mod:`sim.measured` (calibrated
  tables in a profile), :mod:`sim.compute` (roofline or measured times), :mod:`sim.memory` (GPU
  memory: slots, budget, fit), :mod:`sim.workload` (static and continuous batching);
- the model: :mod:`sim.link` (the prioritized host-to-device link), :mod:`sim.host` (host DRAM
  over NVMe), :mod:`sim.engine` (the engine following the policy contract of
  :mod:`policies.base`);
- outputs: :mod:`sim.eventlog`, :mod:`sim.metrics`, :mod:`sim.timeline`, :mod:`sim.plot`;
- running: :mod:`sim.run` (one run), :mod:`sim.compare` (the bundled comparison),
  :mod:`sim.sweep` (``--multirun`` tables) and :mod:`sim.cli` (the Hydra command line);
- subpackages: :mod:`sim.cluster` (expert parallelism over N GPUs), :mod:`sim.tune`
  (``moe-tune``), :mod:`sim.report` (``moe-report``).
"""
