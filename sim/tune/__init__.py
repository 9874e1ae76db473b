"""``moe-tune``: Optuna tuning of policy and cache parameters through the simulator.

Each trial samples a search space, composes the ``moe-sim`` config with Hydra's compose API
(:func:`sim.cli.compose`, :func:`sim.cli.run_config`) and runs :func:`sim.run.simulate`.
The format, objectives, storages, resuming and export are documented in ``conf/tune/README.md``.

Modules, one job each:

- :mod:`sim.tune.space`: the YAML search space, its validation and sampling;
- :mod:`sim.tune.objectives`: which summary values are minimized;
- :mod:`sim.tune.trial`: one trial (prefix pruning, duplicate configs reuse earlier values);
- :mod:`sim.tune.storage`: SQLite (default), journal file or RDB URL storages;
- :mod:`sim.tune.study`: create/resume a study, worker processes, Ctrl-C handling;
- :mod:`sim.tune.export`: a trial as a policy config plus the reproducing ``moe-sim`` command;
- :mod:`sim.tune.cli`: the command line (``run``, ``show``, ``best``, ``export``).
"""
