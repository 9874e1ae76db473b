"""Studies: create or resume one in a storage, and run worker processes on it.

A study is named, lives in a storage (:mod:`sim.tune.storage`) and remembers its space, so any
number of workers (processes here, or ``moe-tune run`` on other machines against the same RDB or
journal) add trials to it. ``n_trials`` is always the study's total of finished (complete or
pruned) trials: a rerun after an interruption runs only what is missing. Ctrl-C stops a worker
after its running trial; a second Ctrl-C aborts that trial (recorded as failed, not counted).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moe_offload_lab.sim.tune.space import Space
from moe_offload_lab.sim.tune.storage import default_storage, open_storage
from moe_offload_lab.sim.tune.trial import Objective
from moe_offload_lab.traces.errors import ConfigError, MoeLabError


def _states() -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def finished(study: Any) -> int:
    """Trials of the study that are complete or pruned (what ``n_trials`` counts)."""
    return len(study.get_trials(deepcopy=False, states=_states()))


def storage_spec(storage: str | None, study_name: str, out_dir: str | Path) -> str:
    """The storage of a study: ``storage`` or the default SQLite file in its folder."""
    return storage or default_storage(Path(out_dir) / study_name)


def _quiet() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_study(spec: str, name: str, space: Space | None = None, seed: int = 0,
               worker: int = 0) -> Any:
    """Create or load study ``name``. With ``space``: created if missing, else checked to have
    been created with the same space; without: loaded (missing -> ConfigError)."""
    import optuna

    _quiet()
    storage = open_storage(spec)
    if space is None:
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise ConfigError(f"no study {name!r} in {spec} (studies: "
                              f"{', '.join(names) or 'none'})") from None
    directions = ["minimize"] * len(space.objectives)
    prev = 0
    try:
        prev = finished(optuna.load_study(study_name=name, storage=storage))
    except KeyError:
        pass
    sampler = optuna.samplers.TPESampler(seed=seed + 1009 * worker + prev)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=space.prune.startup_trials)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    pruner=pruner, directions=directions, load_if_exists=True)
    except ValueError as exc:  # directions differ from the stored study's
        raise ConfigError(f"study {name!r}: {exc}") from None
    stored = study.user_attrs.get("space")
    wanted = space.to_dict()
    if stored is None:
        study.set_user_attr("space", wanted)
        study.set_user_attr("space_name", space.name)
    elif stored != wanted:
        raise ConfigError(f"study {name!r} in {spec} was created with a different space or "
                          f"objective; choose another --study")
    return study


@contextmanager
def graceful_interrupt() -> Iterator[dict[str, bool]]:
    """While active, the first SIGINT/SIGTERM only sets ``flag['stop']`` (the worker stops
    after the running trial); a second one raises KeyboardInterrupt."""
    flag = {"stop": False}
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        print("moe-tune: stopping after the running trial (Ctrl-C again to abort it)",
              file=sys.stderr)

    saved = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def run_worker(space: Space, name: str, spec: str, n_trials: int, seed: int = 0,
               worker: int = 0, progress: bool = False,
               callbacks: Sequence[Callable[[Any, Any], None]] = (),
               barrier: Any = None) -> bool:
    """Add trials to the study until it has ``n_trials`` finished ones (or an interrupt).
    Returns False when stopped early by Ctrl-C/SIGTERM."""
    from optuna.study import MaxTrialsCallback

    study = open_study(spec, name, space, seed, worker)
    if barrier is not None:
        barrier.wait()
    remaining = n_trials - finished(study)
    if remaining <= 0:
        return True
    tag = f"{socket.gethostname()}:{os.getpid()}"
    bar = _bar(n_trials, finished(study)) if progress else None
    objective = Objective(space)

    def tagged(trial: Any) -> Any:
        trial.set_user_attr("worker", tag)
        return objective(trial)

    with graceful_interrupt() as flag:
        def after(study: Any, trial: Any) -> None:
            if bar is not None:
                bar.n = min(n_trials, finished(study))
                bar.refresh()
            if flag["stop"]:
                study.stop()

        try:
            study.optimize(tagged, n_trials=remaining, catch=(),
                           callbacks=[MaxTrialsCallback(n_trials, states=_states()), after,
                                      *callbacks])
        finally:
            if bar is not None:
                bar.close()
    return not flag["stop"]


def _bar(total: int, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="trials", unit="trial", file=sys.stderr)


def _worker_main(space: Space, name: str, spec: str, n_trials: int, seed: int, worker: int,
                 barrier: Any) -> None:
    try:
        ok = run_worker(space, name, spec, n_trials, seed, worker, barrier=barrier)
    except KeyboardInterrupt:
        sys.exit(130)
    except MoeLabError as exc:
        print(f"moe-tune: error: worker {worker}: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if ok else 130)


def run_parallel(space: Space, name: str, spec: str, n_trials: int, workers: int,
                 seed: int = 0, progress: bool = False) -> bool:
    """``workers`` local processes on one study (shared storage); True when it completed."""
    import multiprocessing as mp

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if workers == 1:
        return run_worker(space, name, spec, n_trials, seed, 0, progress)
    study = open_study(spec, name, space, seed)  # created (and checked) once, before the workers
    if finished(study) >= n_trials:
        return True
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_worker_main, args=(space, name, spec, n_trials, seed, i, barrier))
             for i in range(workers)]
    bar = _bar(n_trials, finished(study)) if progress else None
    with graceful_interrupt():  # the workers get the signal too and stop after their trial
        for proc in procs:
            proc.start()
        try:
            while any(p.is_alive() for p in procs):
                time.sleep(0.5)
                if bar is not None:
                    bar.n = min(n_trials, finished(study))
                    bar.refresh()
        finally:
            for proc in procs:
                proc.join()
            if bar is not None:
                bar.close()
    codes = [p.exitcode for p in procs]
    if any(c not in (0, 130) for c in codes):
        raise ConfigError(f"a worker process failed (exit codes {codes})")
    return finished(study) >= n_trials
