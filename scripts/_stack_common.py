"""Configuration and process helpers of scripts/stack (standard library only)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
DEFAULT_CONTROLLER_PORT = 19093
DEFAULT_PG_DSN = "postgresql://factflow_writer:factflow_writer@127.0.0.1:15432/factflow"
DEFAULT_PG_READ_DSN = "postgresql://factflow_reader:factflow_reader@127.0.0.1:15432/factflow"
DEFAULT_TIMEOUT = 60.0


class StackError(Exception):
    """A failure worth one line on stderr and exit status 1 (never a traceback)."""


def say(message: str) -> None:
    print(message, flush=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class Dsn:
    raw: str
    host: str  # "" or a directory: a unix socket
    port: int
    user: str
    password: str
    dbname: str


def parse_dsn(raw: str, var: str) -> Dsn:
    """A libpq URI or keyword/value string, as far as the stack needs it."""
    params: dict[str, str] = {}
    if "://" in raw:
        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError as e:
            raise StackError(f"{var}: {e}") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise StackError(f"{var}: expected postgresql://..., not {parts.scheme}://")
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        params.setdefault("host", parts.hostname or "")
        if port:
            params.setdefault("port", str(port))
        params.setdefault("user", unquote(parts.username or ""))
        params.setdefault("password", unquote(parts.password or ""))
        params.setdefault("dbname", unquote(parts.path.lstrip("/")))
    else:
        try:
            for item in shlex.split(raw):
                key, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(f"{item!r} is not key=value")
                params[key.strip()] = value
        except ValueError as e:
            raise StackError(f"{var}: {e}") from None
    try:
        port = int(params.get("port") or 5432)
    except ValueError:
        raise StackError(f"{var}: invalid port {params.get('port')!r}") from None
    user = params.get("user", "")
    return Dsn(
        raw=raw,
        host=params.get("host", ""),
        port=port,
        user=user,
        password=params.get("password", ""),
        dbname=params.get("dbname") or user,
    )


def split_host_port(address: str, var: str) -> tuple[str, int]:
    first = address.split(",")[0].strip()
    first = first.split("://", 1)[-1]  # PLAINTEXT://host:port is accepted too
    host, sep, port = first.rpartition(":")
    if not sep or not host:
        raise StackError(f"{var}: expected host:port, not {address!r}")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise StackError(f"{var}: invalid port in {address!r}") from None


def env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StackError(f"{name} must be a number, not {raw!r}") from None
    if value <= 0:
        raise StackError(f"{name} must be positive, not {raw!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class Config:
    stack_dir: Path
    timeout: float
    kafka_bootstrap: str
    kafka_host: str
    kafka_port: int
    kafka_controller_port: int
    pg_dsn: Dsn
    pg_read_dsn: Dsn

    @classmethod
    def from_env(cls) -> Config:
        env = os.environ
        bootstrap = env.get("FACTFLOW_KAFKA_BOOTSTRAP", "").strip() or DEFAULT_BOOTSTRAP
        host, port = split_host_port(bootstrap, "FACTFLOW_KAFKA_BOOTSTRAP")
        stack_dir = Path(env.get("FACTFLOW_STACK_DIR", "").strip() or REPO / ".stack")
        return cls(
            stack_dir=stack_dir.expanduser().absolute(),
            timeout=env_number("FACTFLOW_STACK_TIMEOUT", DEFAULT_TIMEOUT),
            kafka_bootstrap=bootstrap,
            kafka_host=host,
            kafka_port=port,
            kafka_controller_port=int(
                env_number("FACTFLOW_KAFKA_CONTROLLER_PORT", DEFAULT_CONTROLLER_PORT)
            ),
            pg_dsn=parse_dsn(env.get("FACTFLOW_PG_DSN") or DEFAULT_PG_DSN, "FACTFLOW_PG_DSN"),
            pg_read_dsn=parse_dsn(
                env.get("FACTFLOW_PG_READ_DSN") or DEFAULT_PG_READ_DSN, "FACTFLOW_PG_READ_DSN"
            ),
        )

    @property
    def kafka_local(self) -> bool:
        return is_loopback(self.kafka_host)

    @property
    def pg_local(self) -> bool:
        return is_loopback(self.pg_dsn.host)

    @property
    def stack_hash(self) -> str:
        """Tells apart two stack dirs that share /var/tmp (e.g. two CI checkouts)."""
        return hashlib.sha256(str(self.stack_dir).encode()).hexdigest()[:8]


# -- processes ------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may contain spaces: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie.

    A process we started in an earlier run is no child of ours; if the machine's
    PID 1 does not reap orphans, a dead broker lingers as a zombie, which
    os.kill(pid, 0) would still report as existing.
    """
    fields = _stat_fields(pid)
    if fields is None:
        return False
    if fields[0] not in ("Z", "X"):
        return True
    # The main thread may end before the others (a JVM shutting down shows "Z"
    # while its threads still hold the ports): alive while any thread is.
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for task in tasks:
        try:
            raw = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except OSError:
            continue
        if raw[raw.rfind(")") + 2 :][:1] not in ("Z", "X"):
            return True
    return False


def pid_cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and len(fields) > 1 and fields[1] == str(pid):
                kids.append(int(entry.name))
    return kids


def procs_in(directory: Path) -> list[int]:
    """Live processes whose working directory is `directory` (PostgreSQL's backends
    chdir into their data directory, and outlive a killed postmaster for a while)."""
    found = []
    target = str(directory.resolve())
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == target and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def tcp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def last_error_line(path: Path) -> str:
    """The last ERROR/FATAL line of a log, shortened: a hint for a one-line error."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - 64 * 1024))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if any(word in line for word in ("ERROR", "FATAL", "PANIC", "Exception", "Error:")):
            line = line.strip()
            return line if len(line) <= 240 else line[:237] + "..."
    return ""
