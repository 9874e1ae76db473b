"""Helpers of the fault-injection suite: run a command, signal it at a random point, check
what it left on disk, and keep the suite's tally (printed by tests/faults/conftest.py).

A command runs as a subprocess in its own process group; SIGKILL goes to the whole group (a
killed job, an out-of-memory kill, a preempted node: nothing can clean up), SIGINT to the whole
group too (Ctrl-C in a terminal reaches every process of the foreground group). The signal comes
after a random delay drawn from the suite's seed (``MOE_FAULT_SEED``, else a fresh one, printed
in the summary so a failure can be replayed), on top of a point of progress the test waits for
(a first finished trial, part or job), so signals land inside the work on a loaded machine too.
Waits have no wall-clock limit that matters: they are hang guards of many minutes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SEED = int(os.environ.get("MOE_FAULT_SEED") or random.SystemRandom().randrange(2**31))
RNG = random.Random(SEED)
HANG_GUARD_S = 900.0  # a command that does not end in this long is hung, not slow


@dataclass
class Tally:
    """What the suite tried and found (reported at the end of the session)."""

    kills: int = 0  # SIGKILLs delivered while the command ran
    interrupts: int = 0  # SIGINTs delivered while the command ran
    finished_first: int = 0  # commands that ended before their signal (nothing delivered)
    outputs_checked: int = 0  # files read back and found complete
    work_lost: int = 0  # finished units (trials, jobs, parts, files) lost or redone
    cases: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The summary line."""
        return (f"fault injection (seed {SEED}): {self.kills} kills (SIGKILL) and "
                f"{self.interrupts} interrupts (SIGINT) tried, {self.outputs_checked} outputs "
                f"checked, work lost: {self.work_lost}"
                + (f" ({self.finished_first} commands ended before their signal)"
                   if self.finished_first else ""))


TALLY = Tally()


@dataclass
class Outcome:
    """How a signalled command ended."""

    returncode: int
    stdout: str
    stderr: str
    signalled: bool  # the signal reached it while it ran


def command(module: str, *args: str) -> list[str]:
    """``python -m moe_offload_lab.<module> args`` with this interpreter."""
    return [sys.executable, "-m", f"moe_offload_lab.{module}", *map(str, args)]


def start(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
          ) -> subprocess.Popen[str]:
    """Start ``cmd`` in its own process group (one thread per process: quick starts)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_until(proc: subprocess.Popen[str], ready: Callable[[], bool],
               poll_s: float = 0.05) -> bool:
    """Wait until ``ready()`` or the process ends; whether it is ready (and still running)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        if ready():
            return proc.poll() is None
        if proc.poll() is not None:
            return False
        time.sleep(poll_s)
    raise AssertionError(f"hung: {proc.args}")


def signal_at_random(proc: subprocess.Popen[str], sig: int, max_delay_s: float) -> Outcome:
    """After a random delay in [0, max_delay_s), send ``sig`` to the process group (if it still
    runs); wait for the end and tally."""
    time.sleep(RNG.uniform(0.0, max_delay_s))
    signalled = proc.poll() is None
    if signalled:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            signalled = False
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    if not signalled:
        TALLY.finished_first += 1
    elif sig == signal.SIGKILL:
        TALLY.kills += 1
    else:
        TALLY.interrupts += 1
    if sig == signal.SIGKILL:
        _reap_group(proc.pid)
    return Outcome(proc.returncode, out, err, signalled)


def _reap_group(pgid: int) -> None:
    """Make sure no process of a SIGKILLed group survives (a worker left behind)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def assert_interrupted_cleanly(outcome: Outcome, codes: tuple[int, ...] = (0, 130)) -> None:
    """Ctrl-C: the command's own exit status and never a traceback; or SIGINT's status, -2, when
    it came while Python was still importing, before the command's handler existed: the
    interpreter then prints its own KeyboardInterrupt, and nothing else."""
    if outcome.signalled:
        assert outcome.returncode in (*codes, -2), outcome.stderr
        if outcome.returncode == -2:
            assert outcome.stderr.rstrip().endswith("KeyboardInterrupt"), outcome.stderr
        else:
            assert "Traceback" not in outcome.stderr, outcome.stderr


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end (a rerun)."""
    proc = start(cmd, cwd, env)
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# ---- what a file must be to count as complete ------------------------------------------------
def check_file(path: Path) -> None:
    """Read ``path`` back by its kind; raises if it is truncated or corrupt."""
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.read_table(path)
    elif suffix == ".png":
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"), path
    elif suffix == ".csv":
        import pandas as pd

        pd.read_csv(path)
    elif suffix in (".yaml", ".yml"):
        import yaml

        yaml.safe_load(path.read_text(encoding="utf-8"))
    elif suffix == ".npz":
        import numpy as np

        with np.load(path) as data:
            for name in data.files:
                data[name]
    elif suffix == ".pt":
        import torch

        torch.load(path, map_location="cpu", weights_only=True)
    elif suffix in (".md", ".txt", ".log", ".sbatch", ".db", ".done") or path.name == ".done":
        path.read_bytes()
    else:
        raise AssertionError(f"no check for {path}")
    TALLY.outputs_checked += 1


def check_tree(folder: Path, skip: tuple[str, ...] = (".hydra",)) -> list[Path]:
    """Every visible file under ``folder`` is complete; leftover temporary files are hidden
    (``.name...tmp``, never mistaken for output). Returns the files checked."""
    checked = []
    if not folder.exists():
        return checked
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(part in skip for part in path.relative_to(folder).parts):
            continue
        if path.name.endswith(".tmp"):
            assert path.name.startswith("."), f"visible temporary file {path}"
            continue
        check_file(path)
        checked.append(path)
    return checked


def no_temporaries(folder: Path) -> None:
    """After a successful rerun nothing temporary is left (orphans of killed writes removed)."""
    left = [p for p in folder.rglob("*.tmp")] if folder.exists() else []
    assert not left, left


def checked(count: int) -> int:
    """Record ``count`` outputs read back and found whole (trials, rows...); returns it."""
    TALLY.outputs_checked += count
    return count


def lost(count: int) -> int:
    """Record ``count`` finished units lost (the tests assert it is 0); returns it."""
    TALLY.work_lost += count
    return count
