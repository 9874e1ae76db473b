"""Validation of the simulator against the executor (``moe-hw validate``).

A matrix of policies x cache sizes x batch sizes on one model shape runs in the real executor
(:func:`hw.replay.run_replay`) and in the simulator (:class:`sim.engine.Engine`) with a calibrated
hardware profile, on the same trace, policy config, capacity and batch. The report gives measured
against simulated mean and p99 step latency and the relative error per cell, the median absolute
error overall, a seaborn figure, a markdown table and one Perfetto/Chrome trace with both
timelines (pid 0 = hardware, pid 1 = simulator).

On the CPU twin (``device=cpu``) the "measured" times are CPU times of host copies and host
compute: the CPU validation checks the pipeline end to end, not the simulator's GPU accuracy.

Modules: :mod:`~hw.validate.matrix` (config, model, trace, cells), :mod:`~hw.validate.cells`
(running one cell on each side), :mod:`~hw.validate.accuracy` (error math),
:mod:`~hw.validate.report` (CSV, figure, markdown, combined timeline), :mod:`~hw.validate.run`,
:mod:`~hw.validate.cli`.
"""
