"""Calibration of a hardware profile from measurements on a device (``moe-hw calibrate``).

Measures, on ``cuda`` (or on ``cpu``, the CPU twin where "device" memory is host memory and a
copy is a plain copy): host-to-device copy time against size, one routed expert's SwiGLU FFN
against tokens, one layer's non-expert work (GQA attention with a KV cache, norms, router) against
batch and context, the router alone, and each named policy's decision time per layer. The result
is a hardware profile YAML whose ``measured:`` block follows :mod:`sim.measured` exactly, plus a
``<name>.calibration.json`` sidecar with every table (the simulator reads only the YAML).

Modules: :mod:`~hw.calibrate.devices` (device, timers, provenance), :mod:`~hw.calibrate.copies`,
:mod:`~hw.calibrate.layers` (the timed torch modules), :mod:`~hw.calibrate.compute` (their
timings), :mod:`~hw.calibrate.executor_timing` (the executor's own code paths, the default when
:mod:`hw.replay` imports), :mod:`~hw.calibrate.policy_cost`,
:mod:`~hw.calibrate.profile` (assembling and writing), :mod:`~hw.calibrate.run` (the whole
calibration), :mod:`~hw.calibrate.cli` (the Hydra command line).
"""
