"""The SimPy discrete-event model of offloaded MoE inference (``moe-sim``).

Modules: :mod:`sim.hardware` (profiles from ``conf/hardware``), :mod:`sim.compute` (roofline
times), :mod:`sim.link` (the prioritized host-to-device link), :mod:`sim.workload` (static
batches), :mod:`sim.engine` (the engine following the policy contract of :mod:`policies.base`),
:mod:`sim.eventlog`, :mod:`sim.metrics` and :mod:`sim.timeline` (outputs), :mod:`sim.run` and
:mod:`sim.cli` (the Hydra command line).
"""
