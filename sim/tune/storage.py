"""Study storages: where trials live, so several processes (or machines) can share a study.

- default (``None``): a SQLite file ``<study folder>/study.db``;
- ``journal:PATH``: Optuna's journal file storage (``JournalStorage`` over ``JournalFileBackend``;
  an append-only log that worker processes on one machine or a shared filesystem can share);
- an RDB URL understood by SQLAlchemy: ``sqlite:///PATH``, ``postgresql://...``,
  ``mysql+pymysql://...`` (its driver must be installed).

RDB storages get a heartbeat, so a trial whose worker was killed is marked failed once its
grace period has passed instead of staying ``RUNNING`` forever.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError

RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
HEARTBEAT_S = 30
GRACE_S = 120


def default_storage(study_dir: Path) -> str:
    """The default storage URL of a study folder."""
    return f"sqlite:///{(study_dir / 'study.db').as_posix()}"


def open_storage(spec: str) -> Any:
    """An Optuna storage object for ``spec`` (see module docstring); bad specs -> ConfigError."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if spec.startswith("journal:"):
        path = Path(spec[len("journal:"):])
        if not path.name:
            raise ConfigError(f"--storage {spec!r}: journal storage needs a file path")
        if path.is_dir():
            raise ConfigError(f"--storage {spec!r}: {path} is a folder, not a journal file")
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    scheme = spec.split(":", 1)[0].split("+", 1)[0].lower()
    if "://" not in spec or scheme not in RDB_SCHEMES:
        raise ConfigError(f"--storage {spec!r}: expected journal:PATH or an RDB URL "
                          f"(sqlite:///PATH, postgresql://...)")
    if scheme == "sqlite":
        path = spec.split(":///", 1)[1] if ":///" in spec else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(spec, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S,
                                          engine_kwargs=_engine_kwargs(scheme))
    except Exception as exc:  # SQLAlchemy: bad URL, missing driver, unreachable server
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--storage {spec!r}: cannot open ({text})") from None


def _engine_kwargs(scheme: str) -> dict[str, Any]:
    if scheme == "sqlite":  # several worker processes: wait for the write lock
        return {"connect_args": {"timeout": 60}}
    return {}
