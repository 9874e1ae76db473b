"""Study storages: where trials live, so several processes (or machines) can share a study.

- default (``None``): a SQLite file ``<study folder>/study.db``;
- ``journal:PATH``: Optuna's journal file storage (``JournalStorage`` over ``JournalFileBackend``;
  an append-only log that worker processes on one machine or a shared filesystem can share);
- an RDB URL understood by SQLAlchemy: ``sqlite:///PATH``, ``postgresql://user:pass@host/db``
  (the ``[postgres]`` extra installs psycopg 3, the driver SQLAlchemy 2.1 uses for a bare
  ``postgresql://``; with only psycopg2 installed, that one is used; ``postgres://`` is accepted
  as a synonym), ``mysql+pymysql://...`` (its driver must be installed).

``schema`` (``moe-tune --schema NAME``, PostgreSQL only) keeps the study's tables in that schema
(created when missing and allowed), for database users who may not create tables in ``public``
(the default from PostgreSQL 15 on); a refused ``CREATE`` is one clear error either way.

Nothing here prints a password: :func:`mask` replaces it in URLs and :func:`scrub` in any
message (drivers quote the URL in some errors). Read-only openings (``create=False``: ``moe-tune
show/best/export``, ``moe-report``) never create a file or folder; no storage creates a missing
folder the user named (a typo would otherwise make a new study silently).

Trials of killed workers do not stay ``RUNNING``: RDB storages get Optuna's heartbeat (a trial
whose heartbeat is older than the grace period is failed when a worker next starts a trial), and
every storage gets an owner check at resume (:mod:`sim.tune.stale`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from moe_offload_lab.traces.errors import ConfigError, first_line

RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
HEARTBEAT_S = 30
GRACE_S = 120
_PASSWORD = re.compile(r"(?P<head>://[^/@:?#]*:)(?P<password>[^@/?#]*)(?P<tail>@)")
_SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_POSTGRES_DRIVERS = (("psycopg", "psycopg"), ("psycopg2", "psycopg2"))  # (module, dialect)


def default_storage(study_dir: Path) -> str:
    """The default storage URL of a study folder."""
    return f"sqlite:///{(study_dir / 'study.db').as_posix()}"


def mask(spec: str) -> str:
    """``spec`` with any URL password replaced by ``***``."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", spec)


def scrub(text: str, spec: str) -> str:
    """``text`` with the password of ``spec`` (as given and URL-decoded) replaced by ``***``."""
    text = text.replace(spec, mask(spec))
    match = _PASSWORD.search(spec)
    if match and match["password"]:
        for secret in {match["password"], unquote(match["password"])}:
            text = text.replace(secret, "***")
    return text


def is_journal(spec: str) -> bool:
    """Whether ``spec`` names a journal file."""
    return spec.startswith("journal:")


def file_of(spec: str) -> Path | None:
    """The file a journal or SQLite storage lives in (None for servers and in-memory SQLite)."""
    if is_journal(spec):
        return Path(spec[len("journal:"):])
    if spec.startswith("sqlite:///"):
        path = spec[len("sqlite:///"):].split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None
    return None


def scheme(spec: str) -> str:
    """``journal``, or the URL's scheme without its driver (``postgresql``, ``sqlite`` ...)."""
    if is_journal(spec):
        return "journal"
    head = spec.split(":", 1)[0].split("+", 1)[0].lower()
    return "postgresql" if head == "postgres" else head


def open_storage(spec: str, *, create: bool = True, schema: str | None = None,
                 default_folder: Path | None = None) -> Any:
    """An Optuna storage object for ``spec`` (see the module docstring). ``create=False``: the
    storage must exist already (nothing is created). ``default_folder``: the default storage's
    folder, which may be created. Bad specs and unreachable storages -> ConfigError."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    _check_file(spec, create, default_folder)
    if schema is not None and scheme(spec) != "postgresql":
        raise ConfigError(f"--schema applies to PostgreSQL storages, not {mask(spec)!r}")
    if is_journal(spec):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(file_of(spec))))
    if "://" not in spec or scheme(spec) not in RDB_SCHEMES:
        raise ConfigError(f"--storage {mask(spec)!r}: expected journal:PATH or an RDB URL "
                          f"(sqlite:///PATH, postgresql://user:pass@host/db)")
    url = _driver_url(spec)
    kwargs = _engine_kwargs(scheme(spec), schema)
    if schema is not None:
        _ensure_schema(url, kwargs, schema, spec)
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S, engine_kwargs=kwargs,
                                          skip_table_creation=not create)
    except Exception as exc:  # SQLAlchemy: bad URL, missing driver, unreachable, no permission
        raise ConfigError(f"--storage {mask(spec)!r}: cannot open "
                          f"({_explain(exc, spec, schema)})") from None


def _check_file(spec: str, create: bool, default_folder: Path | None) -> None:
    path = file_of(spec)
    if path is None:
        return
    if not path.name:
        raise ConfigError(f"--storage {mask(spec)!r}: needs a file path")
    if path.is_dir():
        raise ConfigError(f"--storage {mask(spec)!r}: {path} is a folder, not a file")
    if not create:
        if not path.is_file():
            raise ConfigError(f"no study storage at {path} (it does not exist); give the "
                              f"--storage the study was run with")
    elif not path.parent.is_dir():
        if default_folder is None or path.parent != default_folder:
            raise ConfigError(f"--storage {mask(spec)!r}: the folder {path.parent} does not "
                              f"exist; create it first")
        from moe_offload_lab.traces.atomic import check_output_folder

        check_output_folder(path.parent, "--out")
        path.parent.mkdir(parents=True, exist_ok=True)
    if is_journal(spec) and path.is_file():
        _check_journal(path, spec)


def _check_journal(path: Path, spec: str) -> None:
    """An existing journal file must start with an Optuna journal record (JSON per line)."""
    with open(path, "rb") as handle:
        first = handle.readline(1 << 20)
    if not first.strip():
        return
    try:
        record = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise ConfigError(f"--storage {mask(spec)!r}: {path} is not an Optuna journal file")


def _driver_url(spec: str) -> str:
    """A bare ``postgresql://`` (or ``postgres://``) URL gets the installed driver."""
    head, rest = spec.split("://", 1)
    if head.lower() not in ("postgresql", "postgres"):
        return spec
    import importlib.util

    for module, dialect in _POSTGRES_DRIVERS:
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{dialect}://{rest}"
    raise ConfigError("no PostgreSQL driver is installed: pip install "
                      "'moe-offload-lab[postgres]' (psycopg 3)")


def _engine_kwargs(kind: str, schema: str | None) -> dict[str, Any]:
    if kind == "sqlite":  # several worker processes: wait for the write lock
        return {"connect_args": {"timeout": 60}}
    if kind == "postgresql" and schema is not None:
        return {"connect_args": {"options": f"-csearch_path={schema}"}}
    return {}


def _ensure_schema(url: str, kwargs: dict[str, Any], schema: str, spec: str) -> None:
    """Create ``schema`` when missing (needs CREATE on the database); one error otherwise."""
    if not _SCHEMA.match(schema):
        raise ConfigError(f"--schema {schema!r}: a plain SQL identifier (letters, digits, _)")
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(url, **kwargs)
        try:
            with engine.begin() as conn:
                exists = conn.execute(text("SELECT 1 FROM information_schema.schemata WHERE "
                                           "schema_name = :s"), {"s": schema}).first()
                if exists is None:
                    conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        finally:
            engine.dispose()
    except Exception as exc:
        raise ConfigError(f"--storage {mask(spec)!r} --schema {schema}: "
                          f"{_explain(exc, spec, schema)}") from None


def _root_cause(exc: BaseException) -> BaseException:
    """The database's own error under Optuna's and SQLAlchemy's wrappers."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def _explain(exc: BaseException, spec: str, schema: str | None) -> str:
    """One line for a database error, with the fix for the common permission cases."""
    text = scrub(first_line(_root_cause(exc)), spec).strip()
    low = text.lower()
    if "permission denied for database" in low and schema:
        return (f"{text}: the user may not create schema {schema!r}; use a schema it owns, or "
                f"have the database owner run CREATE SCHEMA {schema} AUTHORIZATION <user>")
    if "permission denied for schema" in low:
        where = f"schema {schema!r}" if schema else "schema 'public'"
        return (f"{text}: the user may not create tables in {where} (PostgreSQL 15+ grants "
                f"no CREATE on public); pass --schema NAME for a schema the user owns, or have "
                f"an owner GRANT CREATE ON SCHEMA to it")
    if "no module named" in low or "dbapi" in low:
        return f"{text}; install the database driver (PostgreSQL: the [postgres] extra)"
    return text
