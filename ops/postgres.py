"""A throw-away PostgreSQL server from Debian's package: for the event-store tests, the events
benchmark, and trying ``RECSYS_EVENTS_URL`` on one machine.

    python -m ops.postgres      # prints the URL of a fresh server; Ctrl-C stops and removes it

From the newest ``/usr/lib/postgresql/<version>/bin``,
run as a non-root user because postgres refuses root: the ``postgres`` user the package creates,
else a ``recsys-pg`` system user made for it (as yourself when not root). It listens on 127.0.0.1
only, on a free port, with trust authentication, in a temporary directory removed at the end.
Not a production setup: no password, no durability tuning beyond PostgreSQL's defaults (initdb
runs with --no-sync; the server itself fsyncs its WAL as usual).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loadtest.harness import free_port

INSTALL_HINT = "install Debian's package (`apt-get install -y postgresql`) and `pip install 'psycopg[binary]'`"
SUPERUSER = "recsys"
OWN_USER = "recsys-pg"  # created when the package's `postgres` user is missing
START_TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """The server could not be started here; ``str(exc)`` says why."""


@dataclass(frozen=True)
class PostgresServer:
    port: int
    data_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        # FILE_COPY: with the default WAL_LOG, creating and dropping a database took 0.8 s here, not 0.3 s.
        self._admin(f'CREATE DATABASE "{name}" STRATEGY = FILE_COPY')
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # FORCE: a killed server's sessions

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)


def bin_dir() -> Path:
    """The newest installed server's binaries (the version is never hard-coded)."""
    found = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
    if not found:
        raise PostgresUnavailable(f"no PostgreSQL server under /usr/lib/postgresql: {INSTALL_HINT}")
    return max((Path(path).parent for path in found), key=lambda path: _version(path.parent.name))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def server_account() -> pwd.struct_passwd | None:
    """Whom the server runs as: None means this process's own (non-root) user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", OWN_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
          "--shell", "/usr/sbin/nologin", OWN_USER], None)
    return pwd.getpwnam(OWN_USER)


def _run(command: list[str], account: pwd.struct_passwd | None, **kwargs) -> subprocess.CompletedProcess:
    as_user = {} if account is None else {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT_S,
                                **as_user, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostgresUnavailable(f"{Path(command[0]).name} failed: {exc}") from exc
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[-2000:]
        raise PostgresUnavailable(f"{Path(command[0]).name} exited with {result.returncode}: {output}")
    return result


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """initdb into a fresh directory, start on 127.0.0.1:<free port>, stop and remove at the end."""
    binaries = bin_dir()
    try:
        import psycopg  # noqa: F401  (the tests' driver: fail here, before starting anything)
    except ImportError as exc:
        raise PostgresUnavailable(f"the psycopg driver is missing: {INSTALL_HINT}") from exc
    account = server_account()
    # Not under pytest's tmp_path: its root is private to root (0700), which the server user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
    try:
        if account is not None:
            os.chown(base, account.pw_uid, account.pw_gid)
        data = base / "data"
        _run([str(binaries / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--no-locale",
              "-E", "UTF8", "--no-sync"], account)
        server = _start(binaries, data, base, account)
        try:
            yield server
        finally:
            _stop(binaries, data, account)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _start(binaries: Path, data: Path, base: Path, account: pwd.struct_passwd | None) -> PostgresServer:
    problem = None
    for _ in range(3):  # another process may take the free port before the server binds it
        port = free_port()
        options = f"-k {base} -p {port} -c listen_addresses=127.0.0.1"
        try:
            _run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
                  "-t", str(START_TIMEOUT_S), "-o", options, "start"], account)
            return PostgresServer(port, data)
        except PostgresUnavailable as exc:
            problem = f"{exc}; server log: {_tail(base / 'server.log')}"
    raise PostgresUnavailable(f"the server did not start: {problem}")


def _stop(binaries: Path, data: Path, account: pwd.struct_passwd | None) -> None:
    try:
        _run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", str(START_TIMEOUT_S), "stop"],
             account)
    except PostgresUnavailable:
        # The postmaster this fixture started (its pid is the first line of postmaster.pid).
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip() or "(empty)"
    except OSError:
        return "(none)"


def main() -> int:
    import signal as signals
    import sys
    import threading

    stopped = threading.Event()
    for signum in (signals.SIGINT, signals.SIGTERM):
        signals.signal(signum, lambda *_: stopped.set())
    try:
        with running_postgres() as server:
            sys.stdout.write(server.url(server.create_database()) + "\n")
            sys.stdout.flush()
            stopped.wait()
    except PostgresUnavailable as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
