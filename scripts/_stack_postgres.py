"""The PostgreSQL half of scripts/stack (standard library only)."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _stack_common import (
    REPO,
    Config,
    StackError,
    alive,
    children_of,
    last_error_line,
    pid_cmdline,
    procs_in,
    say,
    wait_gone,
)

MIN_MAJOR = 15  # psql \getenv (scripts/postgres-init.sql), pg_database_owner on `public`
SHARED_ROOT = Path("/var/tmp/factflow-stack")
INIT_SQL = REPO / "scripts" / "postgres-init.sql"


def pg_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if a PostgreSQL server answers an SSLRequest ('S' or 'N') there.

    Needs no password and no client library; the server logs nothing for a
    client that leaves after the answer.
    """
    try:
        if not host or host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(os.path.join(host or "/var/run/postgresql", f".s.PGSQL.{port}"))
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
        with sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">ii", 8, 80877103))
            return sock.recv(1) in (b"S", b"N")
    except OSError:
        return False


class Postgres:
    """A private cluster. As root it runs as the `postgres` OS user, with its data
    under /var/tmp: CI clones into a `mktemp -d` directory (mode 0700) that the
    postgres user cannot traverse. <stack>/postgres is then a symlink to it.
    """

    name = "postgres"

    def __init__(self, cfg: Config, install: Callable[[list[str], str], None]) -> None:
        self.cfg = cfg
        self.install = install
        dsn = cfg.pg_dsn
        self.host, self.port = dsn.host, dsn.port
        self.address = f"{dsn.host}:{dsn.port}" if dsn.host else f"unix socket, port {dsn.port}"
        self.as_root = os.geteuid() == 0
        self.link = cfg.stack_dir / "postgres"
        if self.as_root:
            self.dir = SHARED_ROOT / f"pg-{self.port}-{cfg.stack_hash}"
        else:
            self.dir = self.link
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.pid_file = self.data / "postmaster.pid"

    # -- state ---------------------------------------------------------------

    @property
    def managed(self) -> bool:
        return self.cfg.pg_local

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        cmd = pid_cmdline(pid)
        if alive(pid) and ("postgres" in cmd or "postmaster" in cmd) and str(self.data) in cmd:
            return pid
        return None

    def pid_file_stale(self) -> bool:
        return self.pid_file.exists() and self.pid() is None

    def answers(self, timeout: float = 2.0) -> bool:
        return pg_answers(self.host, self.port, timeout)

    def logs(self) -> list[Path]:
        return [self.log] if self.log.exists() else []

    # -- lifecycle -------------------------------------------------------------

    def launch(self) -> str:
        if not self.managed:
            say(f"postgres: external at {self.address}: not starting it, checking that it answers")
            return "external"
        self._check_dsns()
        pid = self.pid()
        if pid:
            say(f"postgres: already running (pid {pid}, {self.address})")
            return "running"
        if self.answers():
            say(
                f"postgres: {self.address} is served by a process scripts/stack did not start: "
                "using it as external (its roles and database are not managed)"
            )
            return "external"
        bindir = self._bindir()
        self._prepare_dirs()
        if not (self.data / "PG_VERSION").exists():
            self._initdb(bindir)
        self._write_config()
        self._clear_stale_lock()
        started = self._as_postgres(
            [str(bindir / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log),
             "-w", "-t", str(int(self.cfg.timeout)), "-s"],
        )  # fmt: skip
        if started.returncode != 0:
            hint = last_error_line(self.log) or (started.stderr or "").strip()[:200]
            raise StackError(
                f"postgres: pg_ctl start failed; see {self.log}" + (f" ({hint})" if hint else "")
            )
        self._init_roles(bindir)
        say(
            f"postgres: started (pid {self.pid()}, {self.address}, data {self.data}, "
            f"log {self.log})"
        )
        return "started"

    def wait_ready(self, deadline: float, outcome: str) -> None:
        started = outcome == "started"
        if outcome == "external":
            while not self.answers(timeout=2.0):
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"postgres: nothing answers at {self.address} within "
                        f"{self.cfg.timeout:g} s (FACTFLOW_STACK_TIMEOUT)"
                    )
                time.sleep(0.25)
            return
        bindir = self._bindir(install=False)
        repaired = started
        while True:
            problem = self._login_problem(bindir)
            if not problem:
                if started:
                    say(
                        f"postgres: ready ({self.cfg.pg_dsn.user} and "
                        f"{self.cfg.pg_read_dsn.user} can log in to {self.cfg.pg_dsn.dbname})"
                    )
                return
            if not repaired and self.pid():
                # Running, but a role or password differs from the DSNs: apply them again.
                self._init_roles(bindir)
                repaired = True
                continue
            if self.pid() is None:
                raise StackError(f"postgres: the server is not running; see {self.log}")
            if time.monotonic() >= deadline:
                raise StackError(f"postgres: {problem}; see {self.log}")
            time.sleep(0.25)

    def stop(self, hard: bool = False) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        if hard:
            # Postmaster first (or it would restart its children), then every child:
            # nothing of the old server survives, as after a power cut.
            victims = [pid, *children_of(pid)]
            for victim in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
            wait_gone(victims, 10)
            return True
        bindir = self._bindir(install=False)
        for mode in ("fast", "immediate"):
            done = self._as_postgres(
                [str(bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode,
                 "-w", "-t", "60", "-s"],
            )  # fmt: skip
            if done.returncode == 0 and wait_gone([pid], 10):
                return True
            say(f"postgres: pg_ctl stop -m {mode} did not stop pid {pid}")
        raise StackError(f"postgres: could not stop pid {pid}; see {self.log}")

    # -- helpers ---------------------------------------------------------------

    def _clear_stale_lock(self) -> None:
        """After a crash, make sure nothing of the old server is left, then start.

        PostgreSQL refuses to start while the pid in its lock files (postmaster.pid,
        the socket's .lock) exists, and a SIGKILLed postmaster may linger as a zombie
        until PID 1 reaps it (some container inits never do). The files are stale
        when no process works in the data directory any more; orphaned backends of a
        killed postmaster are ours and keep the old shared memory busy: killed first.
        """
        socket_lock = self.socket_dir() / f".s.PGSQL.{self.port}.lock"
        if not self.pid_file.exists() and not socket_lock.exists():
            return
        orphans = procs_in(self.data)
        if orphans:
            say(f"postgres: killing {len(orphans)} leftover process(es) of the previous server")
            for victim in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
            if not wait_gone(orphans, 10):
                raise StackError(f"postgres: processes {orphans} in {self.data} do not exit")
        # Both lock files name the old postmaster's pid.
        self.pid_file.unlink(missing_ok=True)
        socket_lock.unlink(missing_ok=True)

    def _check_dsns(self) -> None:
        write, read = self.cfg.pg_dsn, self.cfg.pg_read_dsn
        if (read.host, read.port, read.dbname) != (write.host, write.port, write.dbname):
            raise StackError(
                "FACTFLOW_PG_READ_DSN must name the same host, port and database as "
                "FACTFLOW_PG_DSN when scripts/stack runs PostgreSQL"
            )
        if not write.user or not read.user or write.user == read.user:
            raise StackError(
                "FACTFLOW_PG_DSN and FACTFLOW_PG_READ_DSN must name two different users"
            )

    def _bindir(self, install: bool = True) -> Path:
        """The server binaries: the data's own major version, else the highest >= 15."""
        found: dict[int, Path] = {}
        for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
            if bindir.parent.name.isdigit() and all(
                (bindir / tool).exists() for tool in ("initdb", "pg_ctl", "postgres", "psql")
            ):
                found[int(bindir.parent.name)] = bindir
        try:
            need = int((self.data / "PG_VERSION").read_text().strip())
        except (OSError, ValueError):
            need = 0
        if need:
            if need in found:
                return found[need]
            raise StackError(
                f"postgres: {self.data} was made by PostgreSQL {need}, whose binaries are gone; "
                f"install postgresql-{need}, or delete {self.dir} to start afresh"
            )
        usable = [v for v in found if v >= MIN_MAJOR]
        if not usable and install:
            self.install(
                ["postgresql"],
                f"postgres: no PostgreSQL >= {MIN_MAJOR} server in /usr/lib/postgresql/*/bin",
            )
            return self._bindir(install=False)
        if not usable:
            raise StackError(
                f"postgres: no PostgreSQL >= {MIN_MAJOR} server binaries in "
                "/usr/lib/postgresql/*/bin (Debian/Ubuntu: apt-get install -y postgresql)"
            )
        return found[max(usable)]

    def _owner(self) -> pwd.struct_passwd | None:
        if not self.as_root:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise StackError(
                "postgres: running as root, but there is no `postgres` OS user to run the "
                "server as (the Debian package creates it: apt-get install -y postgresql)"
            ) from None

    def _prepare_dirs(self) -> None:
        owner = self._owner()
        if owner is None:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            return
        SHARED_ROOT.mkdir(parents=True, exist_ok=True)
        SHARED_ROOT.chmod(0o755)  # traversable by the postgres user
        self.dir.mkdir(exist_ok=True, mode=0o700)
        os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        # A pointer from the stack dir, so people (and `logs`) find the data.
        self.cfg.stack_dir.mkdir(parents=True, exist_ok=True)
        if self.link.is_symlink() and os.readlink(self.link) != str(self.dir):
            self.link.unlink()
        if not self.link.exists() and not self.link.is_symlink():
            self.link.symlink_to(self.dir)

    def _as_postgres(self, cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a server tool as the cluster's owner (postgres refuses to run as root)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["HOME"] = str(self.dir)
        owner = self._owner()
        extra: dict[str, object] = {}
        if owner is not None:
            extra = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            cmd, cwd=self.dir, env=env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, check=False, **extra, **kwargs,
        )  # fmt: skip

    def _initdb(self, bindir: Path) -> None:
        locale = "C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "C"
        say(f"postgres: initdb {self.data} (PostgreSQL {bindir.parent.name})")
        done = self._as_postgres(
            [str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
             f"--locale={locale}", "--auth-local=trust", "--auth-host=scram-sha-256"],
        )  # fmt: skip
        if done.returncode != 0:
            out = self.dir / "initdb.log"
            out.write_text(done.stdout + done.stderr)
            raise StackError(f"postgres: initdb failed; see {out}")

    def socket_dir(self) -> Path:
        # A unix socket path must fit in 107 bytes; a deep checkout may not.
        if len(str(self.data / f".s.PGSQL.{self.port}.lock")) < 100:
            return self.data
        short = Path(tempfile.gettempdir()) / f"factflow-pg-{self.cfg.stack_hash}"
        short.mkdir(exist_ok=True, mode=0o700)
        owner = self._owner()
        if owner is not None:
            os.chown(short, owner.pw_uid, owner.pw_gid)
        return short

    def _write_config(self) -> None:
        def quote(value: str) -> str:
            return "'" + value.replace("'", "''") + "'"

        settings = {
            "listen_addresses": quote(self.host),
            "port": str(self.port),
            "unix_socket_directories": quote(str(self.socket_dir())),
            "max_connections": "200",
            "shared_buffers": "256MB",
            "synchronous_commit": "on",
            "fsync": "on",
            # The projector rewrites rows all over its tables and indexes; with
            # the default 1GB, checkpoints came every 14 s under its load and
            # every first touch of a page after one logs the whole page.
            "max_wal_size": "'4GB'",
            "wal_compression": "lz4",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            "lc_messages": "'C'",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        conf = self.data / "factflow.conf"
        lines = ["# Written by scripts/stack on every start; edit the script, not this file."]
        conf.write_text("\n".join([*lines, *(f"{k} = {v}" for k, v in settings.items())]) + "\n")
        main = self.data / "postgresql.conf"
        text = main.read_text()
        if "include_if_exists = 'factflow.conf'" not in text:
            main.write_text(
                text + "\n# scripts/stack's settings\ninclude_if_exists = 'factflow.conf'\n"
            )
        owner = self._owner()
        if owner is not None:
            os.chown(conf, owner.pw_uid, owner.pw_gid)

    def _init_roles(self, bindir: Path) -> None:
        """scripts/postgres-init.sql as the superuser, over the private unix socket."""
        write, read = self.cfg.pg_dsn, self.cfg.pg_read_dsn
        variables = {
            "writer": write.user,
            "writer_password": write.password,
            "reader": read.user,
            "reader_password": read.password,
            "dbname": write.dbname,
        }
        cmd = [str(bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
               "-h", str(self.socket_dir()), "-p", str(self.port), "-U", "postgres",
               "-d", "postgres", "-f", "-"]  # fmt: skip
        for key, value in variables.items():
            cmd += ["-v", f"{key}={value}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        # The SQL goes in on stdin: the checkout may be unreadable to other users.
        with open(INIT_SQL, "rb") as sql:
            done = subprocess.run(cmd, stdin=sql, capture_output=True, env=env, check=False)
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise StackError(
                f"postgres: {INIT_SQL.name} failed: {err[-1] if err else done.returncode}"
            )

    def _login_problem(self, bindir: Path) -> str:
        """'' if both DSNs can log in and query, else what went wrong."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = "3"
        for dsn in (self.cfg.pg_dsn, self.cfg.pg_read_dsn):
            done = subprocess.run(
                [str(bindir / "psql"), "-X", "-w", "-At", "-d", dsn.raw, "-c", "SELECT 1"],
                env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0 or done.stdout.strip() != "1":
                lines = done.stderr.strip().splitlines()
                why = re.sub(r"\s+", " ", lines[0]) if lines else f"exit {done.returncode}"
                return f"{dsn.user} cannot log in to {dsn.dbname} ({why})"
        return ""
