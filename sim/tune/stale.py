"""Trials of dead workers: found and failed, so a study never waits on a trial that cannot end.

A worker killed mid-trial (SIGKILL, out of memory, a preempted SLURM task, a machine that went
away) leaves its trial ``RUNNING``. Optuna's heartbeat covers RDB storages, but only after the
grace period and only when a worker next starts a trial; journal storages have none. So every
trial records its **owner** (user attribute ``worker``: ``host:pid:start``, where ``start`` is
the process's start time, so a reused pid is not mistaken for the owner; stamped as soon as
Optuna has created the trial, in the sampler's ``before_trial``, so only a worker killed within
those two storage writes leaves an unowned trial, which the grace period below covers) and, while
it runs, a **heartbeat** (user attribute ``heartbeat_at``, Unix seconds, every
:data:`HEARTBEAT_S`).

:func:`fail_stale` (called when a worker starts and after each of its trials) fails a
``RUNNING`` trial when

- its owner ran on this host and that process is gone (at once, whatever the storage), or
- its last heartbeat (or, before the first, its start) is older than :data:`GRACE_S` (owners on
  other hosts; a frozen machine).

Failed trials are not counted in ``--trials`` totals, so the study reruns what they would have
done. The owner check assumes host names are unique among the machines sharing a study (true of
SLURM nodes; containers sharing one host name and different process namespaces are not).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moe_offload_lab.sim.tune.storage import GRACE_S, HEARTBEAT_S

OWNER_ATTR = "worker"
HEARTBEAT_ATTR = "heartbeat_at"
FAILED_ATTR = "failed_stale"


def _start_token(pid: int) -> str | None:
    """The start time of process ``pid`` with the boot it belongs to (Linux), '' when the OS
    does not say, None when there is no such process."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").is_file():
        try:
            fields = stat.read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        boot = Path("/proc/sys/kernel/random/boot_id")
        boot_id = boot.read_text(encoding="ascii").strip()[:8] if boot.is_file() else ""
        return f"{boot_id}-{fields[19]}"  # field 22 of stat: start time in clock ticks
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def owner_tag() -> str:
    """This process as a trial owner: ``host:pid:start``."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_token(pid) or ''}"


def owner_alive(tag: str) -> bool | None:
    """Whether the owner ``tag`` is still running: True/False on this host, None (unknown)
    for another host or an unreadable tag."""
    host, _, rest = str(tag).partition(":")
    pid_text, _, token = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    now = _start_token(int(pid_text))
    if now is None:
        return False
    return now == token if token and now else True


def _running(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def is_stale(trial: Any, now: float | None = None) -> bool:
    """Whether a RUNNING trial's owner is gone (see the module docstring)."""
    alive = owner_alive(trial.user_attrs.get(OWNER_ATTR, ""))
    if alive is not None:
        return not alive
    now = time.time() if now is None else now
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is not None and now - float(beat) > GRACE_S


def fail_stale(study: Any) -> list[int]:
    """Fail every RUNNING trial of ``study`` whose owner is gone; returns their numbers."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    failed = []
    for trial in _running(study):
        if not is_stale(trial):
            continue
        storage = study._storage  # the public API fails trials only from their own worker
        try:
            storage.set_trial_system_attr(trial._trial_id, FAILED_ATTR, "owner gone")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError):  # it finished meanwhile
            continue
        failed.append(trial.number)
    return failed


@contextmanager
def heartbeat(study: Any) -> Iterator[dict[str, Any]]:
    """While active, a daemon thread stamps ``heartbeat_at`` on the trial whose id is in the
    yielded ``current['trial_id']`` every :data:`HEARTBEAT_S` (the owner sets it)."""
    current: dict[str, Any] = {"trial_id": None}
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            trial_id = current["trial_id"]
            if trial_id is None:
                continue
            try:
                study._storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())
            except Exception:  # noqa: BLE001 - the trial ended meanwhile; the next one is stamped
                pass

    thread = threading.Thread(target=beat, name="moe-tune-heartbeat", daemon=True)
    thread.start()
    try:
        yield current
    finally:
        stop.set()
        thread.join(timeout=5)
