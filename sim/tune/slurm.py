"""``moe-tune slurm``: a study's trials as a SLURM job array against one shared storage.

:func:`write_script` writes ``<dir>/moe-tune-<study>.sbatch``: an array of ``tasks`` tasks,
each one ``moe-tune run`` of the same space copy (``<dir>/space.yaml``), study, storage and
total. Each task adds trials until the study has the total (tasks that find it complete exit at
once); samplers differ per trial (:mod:`sim.tune.sampler`), trials of preempted or killed tasks
are failed and rerun (:mod:`sim.tune.stale`), and SIGTERM (preemption, ``scancel``) stops a task
after its running trial. Nothing here needs SLURM until ``sbatch``: running the script with
``SLURM_ARRAY_TASK_ID`` set is exactly one task.

The storage must be reachable from every node: a PostgreSQL (or other server) URL, or a journal
file on a shared filesystem. SQLite is refused (its locking is unsafe on network filesystems). A
password is never written into the script: the script reads the URL from ``MOE_TUNE_STORAGE``,
which ``sbatch`` passes on from the submitting shell.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from moe_offload_lab.sim.tune.storage import file_of, is_journal, mask, scheme
from moe_offload_lab.traces.atomic import check_output_folder, write_text
from moe_offload_lab.traces.errors import ConfigError

STORAGE_ENV = "MOE_TUNE_STORAGE"


@dataclass(frozen=True)
class ArrayJob:
    """What one array needs besides the study: its size and the ``#SBATCH`` resources."""

    tasks: int
    parallel: int | None = None  # tasks running at once (``--array=0-N%P``)
    time_min: int = 60
    cpus_per_task: int = 1
    mem_gb: float = 4.0
    partition: str | None = None
    extra: tuple[str, ...] = ()  # more sbatch options, e.g. "--account=lab"


def shared_storage(spec: str) -> str:
    """The storage as every node sees it (a journal path made absolute); SQLite refused."""
    kind = scheme(spec)
    if kind == "sqlite":
        raise ConfigError("a SLURM array needs a storage every node can share: "
                          "postgresql://... or journal:PATH on a shared filesystem (SQLite's "
                          "locking is unsafe on network filesystems)")
    if is_journal(spec):
        return f"journal:{file_of(spec).resolve()}"
    return spec


def _has_password(spec: str) -> bool:
    return mask(spec) != spec


def write_script(space_file: Path, study: str, spec: str, trials: int,
                 job: ArrayJob, folder: Path, seed: int = 0, schema: str | None = None
                 ) -> tuple[Path, str]:
    """Write the array script (and the space copy) into ``folder``; returns the script path
    and the storage text it uses (``$MOE_TUNE_STORAGE`` when the URL holds a password)."""
    if job.tasks < 1:
        raise ConfigError(f"--tasks must be at least 1, got {job.tasks}")
    if job.parallel is not None and job.parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {job.parallel}")
    check_output_folder(folder, "--dir")
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "space.yaml"
    write_text(copy, space_file.read_text(encoding="utf-8"))
    storage = shared_storage(spec)
    secret = _has_password(storage)
    storage_arg = f'"${{{STORAGE_ENV}:?export {STORAGE_ENV}=<the storage URL>}}"' if secret \
        else shlex.quote(storage)
    array = f"0-{job.tasks - 1}" + (f"%{job.parallel}" if job.parallel else "")
    lines = ["#!/usr/bin/env bash",
             f"# moe-tune study {study} as a SLURM array: sbatch {shlex.quote(str(folder))}/"
             f"moe-tune-{study}.sbatch",
             f"#SBATCH --job-name=moe-tune-{study}",
             f"#SBATCH --array={array}",
             f"#SBATCH --time={job.time_min}",
             f"#SBATCH --cpus-per-task={job.cpus_per_task}",
             f"#SBATCH --mem={int(round(job.mem_gb * 1024))}M",
             f"#SBATCH --output={folder.resolve()}/slurm-%A_%a.out",
             *([f"#SBATCH --partition={job.partition}"] if job.partition else []),
             *(f"#SBATCH {arg}" for arg in job.extra),
             "set -euo pipefail",
             f"cd {shlex.quote(os.getcwd())}",
             f"export OMP_NUM_THREADS={job.cpus_per_task}",
             f"exec {shlex.quote(sys.executable)} -m moe_offload_lab.sim.tune.cli run "
             f"{shlex.quote(str(copy.resolve()))} --study {shlex.quote(study)} "
             f"--storage {storage_arg} --trials {trials} --seed {seed} --no-progress"
             + (f" --schema {shlex.quote(schema)}" if schema else "")]
    script = folder / f"moe-tune-{study}.sbatch"
    write_text(script, "\n".join(lines) + "\n")
    script.chmod(script.stat().st_mode | 0o111)
    return script, (f"${STORAGE_ENV}" if secret else storage)


def submit(script: Path) -> str:
    """``sbatch script``; its output (the job id line). No SLURM here -> ConfigError."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ConfigError(f"sbatch not found: SLURM is not installed here; the script is "
                          f"{script} (run it with SLURM_ARRAY_TASK_ID=0 to try one task)")
    done = subprocess.run([sbatch, str(script)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(f"sbatch {script} failed: {message[0] if message else done.returncode}")
    return done.stdout.strip()
