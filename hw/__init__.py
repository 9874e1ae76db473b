"""The real offloading executor in torch, calibration and sim-vs-hardware validation (``moe-hw``).

Executor core (see ``hw/README.md``):

- :mod:`hw.device`: CUDA streams/events, or the CPU twin behind the same interface;
- :mod:`hw.store`: all routed experts in (pinned) host memory, one contiguous buffer each;
- :mod:`hw.slots`: the fixed pool of device slots (sized like the simulator) and scratch buffers;
- :mod:`hw.executor`: :class:`~hw.executor.OffloadExecutor`, MoE layers under a policy with the
  simulator's call order and event log;
- :mod:`hw.replay`: replay mode (routing forced from a trace), ``run_replay`` -> ``ReplayResult``;
- :mod:`hw.run`: ``run_from_config(mapping)`` for a command line.

Calibration lives in :mod:`hw.calibrate`, sim-vs-hardware validation in :mod:`hw.validate`.
Built in the executor issue.
"""
