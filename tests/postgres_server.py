"""A throwaway PostgreSQL server for tests: initdb in a temporary folder, a free port, stopped
and removed afterwards. Used by the ``postgres`` fixture (tests/conftest.py).

It needs the server binaries (``initdb``, ``pg_ctl``: on PATH or under
``/usr/lib/postgresql/*/bin``, Debian's ``postgresql`` package) and the psycopg driver (the
``[postgres]`` extra); :func:`find_binaries` says what is missing so the tests skip with that
message. PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user
(else ``nobody``) through ``setpriv``.

Roles: ``admin`` (superuser, password ``admin-secret``) and ``tuner`` (password
``tuner-secret``), a plain user who may connect to database ``tune`` but, as PostgreSQL 15+
defaults, not create tables in its ``public`` schema; schema ``tuner_space`` is owned by it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

ADMIN, ADMIN_PASSWORD = "admin", "admin-secret"
USER, USER_PASSWORD, USER_SCHEMA = "tuner", "tuner-secret", "tuner_space"
DATABASE = "tune"


def find_binaries() -> tuple[Path | None, str]:
    """The folder of ``initdb``/``pg_ctl``, or None and why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, "the psycopg driver is not installed (pip install '.[postgres]')"
    found = shutil.which("initdb")
    folders = [Path(found).resolve().parent] if found else []
    folders += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in folders:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder, ""
    return None, ("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in "
                  "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A running server (see the module docstring); :meth:`stop` removes everything."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="moe-pg-"))
        self.port = _free_port()
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            entry = pwd.getpwnam(_server_user())
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self.run_as = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                           "--clear-groups", "--"]
        self.data, self.log = self.root / "data", self.root / "server.log"
        password_file = self.root / "pw"
        password_file.write_text(ADMIN_PASSWORD + "\n", encoding="utf-8")
        if self.run_as:
            os.chown(password_file, pwd.getpwnam(_server_user()).pw_uid, -1)
        self._run("initdb", "-D", str(self.data), "-U", ADMIN, "-A", "scram-sha-256",
                  f"--pwfile={password_file}", "--no-sync", "-E", "UTF8")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                        f"-c fsync=off -c full_page_writes=off", "start")
        self._setup()

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.run_as, str(self.bin_dir / tool), *args],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.is_file() else ""
            raise RuntimeError(f"{tool} failed: {done.stderr.strip()} {log[-500:]}")

    def url(self, user: str = USER, password: str | None = USER_PASSWORD,
            database: str = DATABASE) -> str:
        """A ``postgresql://`` URL of this server."""
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def _setup(self) -> None:
        import psycopg

        with psycopg.connect(self.url(ADMIN, ADMIN_PASSWORD, "postgres"),
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ADMIN}")
            conn.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{USER_PASSWORD}'")
        with psycopg.connect(self.url(ADMIN, ADMIN_PASSWORD), autocommit=True) as conn:
            conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # as PostgreSQL 15+
            conn.execute(f"CREATE SCHEMA {USER_SCHEMA} AUTHORIZATION {USER}")

    def stop(self) -> None:
        """Stop the server at once and remove its folder."""
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _server_user() -> str:
    """Who runs the server when the tests run as root: ``postgres``, else ``nobody``."""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"
