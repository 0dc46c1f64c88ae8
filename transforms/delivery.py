"""Deliver finished files (claim extracts, reports) to a partner: a local outbox folder or an SFTP
server.

Inputs: the local files and a delivery spec, ``{"type": "outbox", "path": DIR}`` (a relative DIR
is under ``HL7ICS_DATA_DIR``, as for the facilities' drop folders) or
``{"type": "sftp", "conn_id": ID, "path": REMOTE_DIR}`` (the connection is looked up with
``resolve_connection``: Airflow's in the DAGs, ``AIRFLOW_CONN_<ID>`` through
``transforms.alerting.connection_from_env`` outside Airflow; see ``transforms/sftp.py`` for its
fields). Output: ``{"target": "outbox:/dir" | "sftp://host:port/dir", "files": n, "status":
"delivered"}``; the target never holds credentials, so it can be stored (``claim_delivery.target``)
and shown in alerts.

Every file appears complete or not at all: the outbox copy is written to a hidden ``.tmp`` name in
the same folder then renamed, the SFTP upload goes through ``<name>.part`` then a rename (and
resumes after a dropped connection). Delivering the same file again replaces it with identical
content, so a retried task is harmless. Errors: ``ConfigError`` for a bad spec or an unknown
connection (not retried), ``SourceError`` for I/O and network problems (retried), the
``transforms.sftp`` errors for host keys and authentication.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from .alerting import connection_from_env
from .config import ConfigError, Settings
from .errors import SourceError
from .sftp import SftpClient, SftpTarget, check_name

DELIVERY_TYPES = ("outbox", "sftp")


def deliver(files: list[Path], spec: dict,
            resolve_connection: Callable[[str], dict | None] = connection_from_env,
            delivered: Callable[[Path], None] | None = None) -> dict:
    """Deliver ``files`` as described by ``spec``; see the module docstring. ``delivered`` is
    called with each file once it is in place, so a caller whose delivery fails part-way knows
    which files arrived before the error."""
    if not isinstance(spec, dict) or spec.get("type") not in DELIVERY_TYPES:
        raise ConfigError(f"delivery: 'type' must be one of {', '.join(DELIVERY_TYPES)}")
    paths = _check_files(files)
    done = delivered or (lambda p: None)
    if spec["type"] == "outbox":
        return _to_outbox(paths, spec, done)
    return _to_sftp(paths, spec, resolve_connection, done)


def _check_files(files) -> list[Path]:
    paths = [Path(f) for f in files]
    seen: set[str] = set()
    for p in paths:
        try:
            check_name(p.name)
        except ValueError:
            raise ConfigError("delivery: file names must be plain names") from None
        if p.name in seen:
            raise ConfigError(f"delivery: two files are named {p.name}; one would replace the other")
        seen.add(p.name)
        if not p.is_file():
            raise SourceError(f"delivery: file to deliver not found: {p.name}")
    return paths


def _to_outbox(paths: list[Path], spec: dict, done: Callable[[Path], None]) -> dict:
    raw = spec.get("path")
    if not isinstance(raw, (str, os.PathLike)) or not str(raw).strip():
        raise ConfigError("delivery to an outbox: 'path' (a folder) is required")
    dest = Path(raw).expanduser()
    if not dest.is_absolute():
        dest = Settings.load().data_dir / dest  # like the folder sources and config/insurers.yaml
    dest = dest.resolve()
    target = f"outbox:{dest}"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for p in paths:
            # Hidden .tmp name in the same folder: the rename is atomic, and folder readers
            # (FolderSource, partners' scripts) skip dot-files and *.tmp.
            tmp = dest / f".{p.name}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                with open(p, "rb") as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1024 * 1024)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, dest / p.name)
            finally:
                if tmp.exists():
                    tmp.unlink()
            done(p)
        _fsync_dir(dest)
    except OSError as exc:
        raise SourceError(f"delivery to {target} failed ({type(exc).__name__})") from None
    return {"target": target, "files": len(paths), "status": "delivered"}


def _fsync_dir(path: Path) -> None:
    # Makes the renames durable; not every platform can open a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _to_sftp(paths: list[Path], spec: dict, resolve_connection, done: Callable[[Path], None]) -> dict:
    conn_id = spec.get("conn_id")
    if not isinstance(conn_id, str) or not conn_id.strip():
        raise ConfigError("delivery over SFTP: 'conn_id' (an Airflow connection id) is required")
    try:
        conn = resolve_connection(conn_id)
    except Exception as exc:  # a secrets backend hiccup: retried, and its text (secrets?) not echoed
        raise SourceError(f"delivery over SFTP: connection {conn_id} could not be read ({type(exc).__name__})") from None
    if conn is None:
        raise ConfigError(f"delivery over SFTP: connection {conn_id} is not defined")
    path = spec.get("path")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise ConfigError("delivery over SFTP: 'path' must be a remote directory")
    target = SftpTarget.from_connection(conn, path=path)
    with SftpClient(target) as client:
        client.makedirs(".")
        for p in paths:
            client.upload(p, p.name)
            done(p)
    return {"target": target.label, "files": len(paths), "status": "delivered"}


__all__ = ["deliver", "DELIVERY_TYPES"]
