"""A private PostgreSQL server for the ingest benchmark, configured as ``docker-compose.yml``
configures production's.

Input: the machine's own PostgreSQL binaries (``pg_config --bindir``) and the ``-c`` settings of
the compose file's ``postgres`` service. Output: a libpq connection string to a server made by
``initdb`` in a temporary directory, listening on a free local port, with the locale of the
machine's own server; it is stopped and deleted when the ``with`` block ends.

Why: the machine's shared server keeps its distribution's defaults (4 MB of WAL buffers), which
make a bulk load wait for WAL writes (docs/operations.md, "PostgreSQL settings"); production runs
the compose file's settings. The benchmark measures both in the same run, so the difference is
the configuration alone.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


class Unavailable(Exception):
    """No private server can be started here (the reason is the message)."""


def compose_settings(path: Path = COMPOSE) -> list[str]:
    """The ``name=value`` settings the compose file passes to its ``postgres`` service with ``-c``."""
    import yaml

    command = yaml.safe_load(path.read_text())["services"]["postgres"].get("command") or []
    return [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "-c"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def compose_configured_server(locale: str = "C.UTF-8"):
    """Yield a connection string to a fresh server with the compose file's settings.

    Raises ``Unavailable`` when the binaries are missing or the server does not start (a laptop
    without PostgreSQL installed, say)."""
    try:
        bindir = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                     check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        raise Unavailable("pg_config not found") from None
    if not (bindir / "initdb").exists() or not (bindir / "pg_ctl").exists():
        raise Unavailable(f"no initdb or pg_ctl in {bindir}")
    # initdb refuses to run as root: the server then runs as the postgres account.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    tmp = Path(tempfile.mkdtemp(prefix="hl7ics-pg-"))
    data, port = tmp / "data", _free_port()
    if as_user:
        try:
            shutil.chown(tmp, "postgres")
        except (LookupError, OSError):
            shutil.rmtree(tmp, ignore_errors=True)
            raise Unavailable("running as root and there is no postgres account to run the server") from None
    settings = " ".join(f"-c {s}" for s in ["listen_addresses=127.0.0.1", f"unix_socket_directories={tmp}",
                                            *compose_settings()])

    def run(*args: str) -> None:
        try:
            done = subprocess.run([*as_user, *args], capture_output=True, text=True)
        except OSError as exc:  # runuser missing, say
            raise Unavailable(f"cannot run {Path(args[0]).name}: {exc.strerror}") from None
        if done.returncode:
            raise Unavailable(f"{Path(args[0]).name} failed: {(done.stderr or done.stdout).strip()[-300:]}")

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            f"--locale={locale}", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "server.log"), "-w", "-o",
            f"-p {port} {settings}", "start")
        started = True
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    finally:
        if started:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
