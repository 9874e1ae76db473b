"""The compiled engine: the simulator's hot loop in numba for the built-in policy family.

The Python engine (:class:`sim.engine.Engine`, its ``_main``) stays the reference. For the runs
:func:`~sim.compiled.eligibility.compiled_plan` admits (a plain composed policy of predictor
``none``/``gate-lookahead``, planner ``on-demand``/``next-layer``, replacement ``lru``,
placement ``gpu``, admission ``always``; a runtime that overlaps copies with compute, whole
copies, host DRAM over NVMe without a tiered rule; static or continuous batching),
``Engine.run`` hands the schedule to :func:`~sim.compiled.runner.run_compiled` instead, which
writes the same event log row for row and to the bit (``tests/sim/test_compiled.py``
compares whole frames at every log level).

- :mod:`sim.compiled.eligibility`: the plan, or the reason a run stays on Python;
- :mod:`sim.compiled.kernel`: the numba functions (compiled on first use, cached on disk);
- :mod:`sim.compiled.runner`: the driver (inputs, calls, the log, the Python objects after).

The switch is ``Engine(..., engine="auto"|"python"|"compiled")`` and the run config's
``engine`` key; ``compiled`` on an ineligible run is a ConfigError naming the reason.
"""
