"""Atomic file writes and output-path checks.

Every output of the tools goes through :func:`atomic_path`: the file is written under a
temporary name in the target's folder and renamed over the target, so an interrupted or failed
write (an exception, Ctrl-C, SIGKILL) never leaves a half-written file behind; the previous file,
if any, stays intact. The finished file gets the permissions any new file of the user gets
(``0o666`` less the process's umask), not the ``0o600`` of the temporary file. A temporary file
is named after its writer (``.<name>.<host>-<pid>.<random>.tmp``); one left by a killed writer
of this host is removed by the next write of the same file.

Commands check their output paths *before* they start long work (:func:`check_output_file`,
:func:`check_output_folder`): a folder named where a file goes, a path under an existing file or
an unwritable location is one :class:`~traces.errors.ConfigError`, not a traceback after the
work is done. Such a check creates nothing: folders it makes to probe the location are removed.
"""

from __future__ import annotations

import errno
import glob
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moe_offload_lab.traces.errors import ConfigError

# OS errors of a write caused by where it goes (not by a bug): reported as one line
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                errno.ENOTDIR, errno.EISDIR}


def umask() -> int:
    """The process's file-creation mask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting and restoring it
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permission bits of a newly created regular file: ``0o666`` less the umask."""
    return 0o666 & ~umask()


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(path.anchor or ".")


def _probe_folder(folder: Path, what: str) -> None:
    """Make sure files can be created in ``folder``: create it (and its missing parents) and a
    temporary file in it, then remove everything this probe created."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what}: {folder} exists and is not a folder")
    blocker = _existing_ancestor(folder)
    if not blocker.is_dir():
        raise ConfigError(f"{what}: {blocker} is a file, so {folder} cannot be a folder")
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot write in {folder} ({_reason(exc)})") from None
    finally:
        for p in made:  # deepest first: leave nothing behind
            try:
                p.rmdir()
            except OSError:
                break


def check_output_file(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Raise ConfigError unless a file can be written at ``path`` (not a folder, its folder
    creatable and writable). Creates nothing; returns the path."""
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise ConfigError(f"{what}: {str(path)!r} names no file")
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a folder; give a file name")
    _probe_folder(path.parent if str(path.parent) else Path("."), what)
    return path


def check_output_folder(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Raise ConfigError unless ``path`` is (or can be created as) a writable folder. Creates
    nothing; returns the path."""
    path = Path(path)
    _probe_folder(path, what)
    return path


def _remove_orphans(path: Path) -> None:
    """Remove temporary files of ``path`` left by killed writers of this host (a SIGKILL gives
    no chance to clean up): ``.<name>.<host>-<pid>.<random>.tmp`` whose process is gone."""
    host = socket.gethostname()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}-*.tmp"):
        pid = tmp.name[len(path.name) + len(host) + 3:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit rename it over ``path``.

    The caller writes the whole file to the yielded path. On an exception the temporary file is
    removed and ``path`` is left untouched. Parent folders are created. A location that cannot
    be written (a folder where the file goes, a parent that is a file, no permission, a full
    disk) raises :class:`ConfigError` with one line.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        owner = f"{socket.gethostname()}-{os.getpid()}"  # whose write it is
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner}.", suffix=".tmp",
                                   dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({_reason(exc)})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _USER_ERRNOS:
            raise ConfigError(f"cannot write {path} ({_reason(exc)})") from None
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
