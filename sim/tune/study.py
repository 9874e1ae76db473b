"""Studies: create or resume one in a storage, and run worker processes on it.

A study is named, lives in a storage (:mod:`sim.tune.storage`) and remembers its space, so any
number of workers (processes here, or ``moe-tune run`` on other machines against the same RDB or
journal) add trials to it. ``n_trials`` is always the study's total of finished (complete or
pruned) trials: a rerun after an interruption runs only what is missing. Ctrl-C stops a worker
after its running trial; a second Ctrl-C aborts that trial (recorded as failed, not counted).

Each worker samples with :class:`~sim.tune.sampler.TrialSeededSampler` (distinct trials without
distinct seeds), records itself as each trial's owner and keeps a heartbeat on it, and fails the
trials of dead workers when it starts and after each trial (:mod:`sim.tune.stale`).

The default study name says who and what: ``<space>.<objective(s)>.<user>``
(:func:`default_study_name`), so two users of one database, or two objectives of one space, never
share a study by accident.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moe_offload_lab.sim.tune.sampler import TrialSeededSampler
from moe_offload_lab.sim.tune.space import Space
from moe_offload_lab.sim.tune.stale import OWNER_ATTR, fail_stale, heartbeat, owner_tag
from moe_offload_lab.sim.tune.storage import default_storage, file_of, mask, open_storage
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


def user_name() -> str:
    """The login name, for study names (``user`` when the OS does not say)."""
    import getpass

    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = ""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "user"


def default_study_name(space: Space) -> str:
    """``<space>.<objective>[+<objective>].<user>``: who runs what."""
    return f"{space.name}.{'+'.join(space.objectives)}.{user_name()}"


def _quiet() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_study(spec: str, name: str, space: Space | None = None, seed: int = 0,
               worker: int = 0, schema: str | None = None) -> Any:
    """Create or load study ``name``. With ``space``: created if missing, else checked to have
    been created with the same space; without: loaded read-only (a missing storage or study ->
    ConfigError; nothing is created; only the default storage's folder, ``<study>/study.db``,
    is created with the study). Trials are sampled by a :class:`TrialSeededSampler` from
    ``seed`` (``worker`` is kept for callers; trial numbers already keep workers apart)."""
    import optuna

    _quiet()
    path, folder = file_of(spec), None
    if path is not None and path.parent.name == name and spec == default_storage(path.parent):
        folder = path.parent  # <folder named after the study>/study.db: the default layout
    storage = open_storage(spec, create=space is not None, schema=schema, default_folder=folder)
    where = mask(spec)
    try:
        if space is None:
            try:
                return optuna.load_study(study_name=name, storage=storage,
                                         sampler=TrialSeededSampler(seed))
            except KeyError:
                names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
                raise ConfigError(f"no study {name!r} in {where} (studies: "
                                  f"{', '.join(names) or 'none'})") from None
        directions = ["minimize"] * len(space.objectives)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=space.prune.startup_trials)
        try:
            study = optuna.create_study(study_name=name, storage=storage,
                                        sampler=TrialSeededSampler(seed), pruner=pruner,
                                        directions=directions, load_if_exists=True)
        except ValueError as exc:  # directions differ from the stored study's
            raise ConfigError(f"study {name!r}: {exc}") from None
        stored = study.user_attrs.get("space")
        wanted = space.to_dict()
        if stored is None:
            study.set_user_attr("space", wanted)
            study.set_user_attr("space_name", space.name)
        elif stored != wanted:
            raise ConfigError(f"study {name!r} in {where} was created with a different space "
                              f"or objective; choose another --study")
        return study
    except MoeLabError:
        raise
    except Exception as exc:  # the database refused (permissions, a broken file...)
        from moe_offload_lab.sim.tune.storage import _explain

        raise ConfigError(f"--storage {where!r}: {_explain(exc, spec, schema)}") from None


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
               barrier: Any = None, schema: str | None = None) -> bool:
    """Add trials to the study until it has ``n_trials`` finished ones (or an interrupt).
    Returns False when stopped early by Ctrl-C/SIGTERM."""
    from optuna.study import MaxTrialsCallback

    study = open_study(spec, name, space, seed, worker, schema)
    if barrier is not None:
        barrier.wait()
    _report_stale(fail_stale(study))
    remaining = n_trials - finished(study)
    if remaining <= 0:
        return True
    owner, task = owner_tag(), _slurm_task()
    bar = _bar(n_trials, finished(study)) if progress else None
    objective = Objective(space)

    with graceful_interrupt() as flag, heartbeat(study) as current:
        def claim(_: Any, frozen: Any) -> None:
            # the trial's owner, stamped as soon as Optuna has created it (before any sampling):
            # a worker killed before this leaves an unowned trial, failed after the grace period
            storage = study._storage
            storage.set_trial_user_attr(frozen._trial_id, OWNER_ATTR, owner)
            if task:
                storage.set_trial_user_attr(frozen._trial_id, "slurm_task", task)
            current["trial_id"] = frozen._trial_id

        study.sampler.on_start = claim  # open_study's TrialSeededSampler

        def tagged(trial: Any) -> Any:
            try:
                return objective(trial)
            finally:
                current["trial_id"] = None

        def after(study: Any, trial: Any) -> None:
            _report_stale(fail_stale(study))
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


def _slurm_task() -> str:
    """``<array job>_<task>`` inside a SLURM array task, else ''."""
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{os.environ.get('SLURM_ARRAY_JOB_ID', 'local')}_{task}" if task else ""


def _report_stale(numbers: list[int]) -> None:
    if numbers:
        print(f"moe-tune: trial(s) {', '.join(map(str, numbers))} of a dead worker marked "
              f"failed (rerun, not counted)", file=sys.stderr)


def _bar(total: int, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="trials", unit="trial", file=sys.stderr)


def _worker_main(space: Space, name: str, spec: str, n_trials: int, seed: int, worker: int,
                 barrier: Any, schema: str | None = None) -> None:
    try:
        ok = run_worker(space, name, spec, n_trials, seed, worker, barrier=barrier,
                        schema=schema)
    except KeyboardInterrupt:
        sys.exit(130)
    except MoeLabError as exc:
        print(f"moe-tune: error: worker {worker}: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if ok else 130)


def run_parallel(space: Space, name: str, spec: str, n_trials: int, workers: int,
                 seed: int = 0, progress: bool = False, schema: str | None = None) -> bool:
    """``workers`` local processes on one study (shared storage); True when it completed."""
    import multiprocessing as mp

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if workers == 1:
        return run_worker(space, name, spec, n_trials, seed, 0, progress, schema=schema)
    # created (and checked) once, before the workers
    study = open_study(spec, name, space, seed, schema=schema)
    if finished(study) >= n_trials:
        return True
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_worker_main,
                         args=(space, name, spec, n_trials, seed, i, barrier, schema))
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
