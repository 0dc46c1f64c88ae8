"""SFTP client for partner servers: key authentication only, pinned host keys, resumable transfers.

Inputs: an ``SftpTarget`` (host, port, user, private key, pinned host keys, remote directory), built
by hand or from an Airflow-style connection dict (``SftpTarget.from_connection``, e.g. what
``transforms.alerting.connection_from_env`` returns: ``login`` is the user, ``extra`` holds
``private_key`` or ``private_key_file``, ``host_key`` or ``known_hosts``, optionally ``path``,
``private_key_passphrase`` and ``timeout``; ``password`` is ignored: key authentication only).
Outputs: ``SftpClient``, a synchronous context manager over asyncssh (callers, the DAG tasks, stay
synchronous): ``list``, resumable ``download`` and ``upload``, ``remove``, ``rename``, ``makedirs``.

Security rules:
- The server's host key must match a pinned key: ``host_keys`` holds public key lines
  (``ssh-ed25519 AAAA...``), OpenSSH ``known_hosts`` lines, or the path of a ``known_hosts`` file. A
  target without any is refused before connecting; an unknown or different key is never accepted
  (``SftpHostKeyError``, not retried: a changed key needs a person, it may be an impostor). The
  user's ``~/.ssh`` (config, known_hosts, keys, agent) is never consulted.
- Secrets (private key, passphrase) never appear in ``repr``, logs or exception text: errors carry
  the target (``sftp://host:port/dir``), the action and the class of the underlying error only.
- Remote names are plain file names: a name from a listing with a path separator, ``.`` or ``..``
  is skipped, and such a name passed by a caller is refused.

Errors: network and I/O problems raise ``SftpError`` (a ``transforms.errors.SourceError``, so the
Airflow retry policy retries them); configuration problems ``SftpConfigError`` and refused key
authentication ``SftpAuthError`` (both ``ConfigError``: failed at once).

Transfers are resumable: a download writes ``<local>.part`` and resumes from its size, an upload
writes ``<name>.part`` on the server and resumes from its size; the first and last 64 KiB before
the resume point are compared with the source first (a ``.part`` left by another version of the
file is restarted, not continued), the size is verified, then the file is renamed into place, so a
reader never sees a partial file. A client whose connection dropped is finished: open a new one
(the task's retry) and the transfer resumes.
"""
from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import os
import posixpath
import re
import stat as _stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import asyncssh
from asyncssh.public_key import get_default_certificate_algs, get_default_public_key_algs

from .config import ConfigError
from .errors import HL7ICSError, SourceError

log = logging.getLogger(__name__)

CHUNK = 256 * 1024          # bytes per read/write call; each completes (or fails) within the timeout
VERIFY = 64 * 1024          # bytes compared at the start and end of a partial file before resuming
DEFAULT_TIMEOUT = 30.0      # seconds, for connecting and for each chunk: a dead server fails the call
PART = ".part"

_KEY_LINE = re.compile(r"^(ssh-|ecdsa-|sk-)[A-Za-z0-9@._-]+\s+[A-Za-z0-9+/=]+")
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


class SftpConfigError(ConfigError):
    """The SFTP target or connection is incomplete or invalid (never retried)."""


class SftpAuthError(ConfigError):
    """The server refused the client key: the key is not (yet) authorised there (never retried)."""


class SftpHostKeyError(HL7ICSError, ValueError):
    """The server's host key matches none of the pinned keys. Never retried: a changed host key
    needs a person to check it, the server may be an impostor."""


class SftpError(SourceError):
    """A network or I/O problem talking to the SFTP server (retried by the Airflow retry policy)."""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    mtime: float  # seconds since the epoch, as the server reports it


@dataclass(frozen=True)
class Transfer:
    name: str
    size: int          # bytes of the complete file
    resumed_from: int  # bytes already in place from an earlier, interrupted attempt


# A listed file is taken only if its name leaves room under the usual 255-byte limit for what is
# added to it here: the ``.part`` suffix of a download and the 17-byte hash prefix of an archived copy.
MAX_LISTED_NAME_BYTES = 200


def check_name(name: str, limit: int = 255) -> str:
    """``name`` if it is a plain remote file name of at most ``limit`` bytes, else ``ValueError``
    (the name is not echoed)."""
    if not isinstance(name, str) or not name or name in (".", "..") or _BAD_NAME.search(name) \
            or len(name.encode("utf-8", "surrogatepass")) > limit:
        raise ValueError(f"remote file names must be plain names of at most {limit} bytes: no path separator, "
                         "control character, '.' or '..'")
    return name


@dataclass(frozen=True)
class SftpTarget:
    """Where to connect and what to trust. ``private_key`` is PEM/OpenSSH text or a file path;
    ``host_keys`` one or more pinned public key or known_hosts lines, or a known_hosts file path."""

    host: str
    port: int = 22
    username: str = ""
    private_key: str = field(default="", repr=False)
    host_keys: tuple = ()
    path: str = "."
    passphrase: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    _pinned: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host.strip() or any(c.isspace() for c in self.host):
            raise SftpConfigError("sftp target: 'host' is required")
        try:
            port = int(self.port)
        except (TypeError, ValueError):
            raise SftpConfigError(f"sftp target {self.host}: 'port' must be an integer") from None
        if not 0 < port < 65536:
            raise SftpConfigError(f"sftp target {self.host}: 'port' must be between 1 and 65535")
        object.__setattr__(self, "port", port)
        if not isinstance(self.username, str) or not self.username.strip():
            raise SftpConfigError(f"{self.label}: the user name ('login') is required")
        if not isinstance(self.private_key, str) or not self.private_key.strip():
            raise SftpConfigError(f"{self.label}: a private key is required (key authentication only)")
        try:
            timeout = float(self.timeout)
        except (TypeError, ValueError):
            raise SftpConfigError(f"{self.label}: 'timeout' must be a number of seconds") from None
        if timeout <= 0:
            raise SftpConfigError(f"{self.label}: 'timeout' must be positive")
        object.__setattr__(self, "timeout", timeout)
        if not isinstance(self.path, str) or not self.path or "\x00" in self.path:
            raise SftpConfigError(f"sftp target {self.host}: 'path' must be a remote directory")
        if ".." in self.path.split("/"):
            raise SftpConfigError(f"sftp target {self.host}: 'path' must not contain '..'")
        keys = self.host_keys
        if isinstance(keys, str):
            keys = (keys,)
        keys = tuple(k for k in (keys or ()) if isinstance(k, str) and k.strip())
        object.__setattr__(self, "host_keys", keys)
        object.__setattr__(self, "_pinned", _parse_host_keys(keys, self.label))

    @property
    def label(self) -> str:
        """``sftp://host:port/dir``: how the target is named in messages (never credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.path.startswith("/") else "/" + ("" if self.path == "." else self.path)
        return f"sftp://{host}:{self.port}{path}"

    @classmethod
    def from_connection(cls, conn: dict, path: str | None = None) -> "SftpTarget":
        """Target from an Airflow-style connection dict (see the module docstring); ``path``
        overrides the connection's directory (``extra.path``, else ``schema``, else the login
        directory)."""
        if not isinstance(conn, dict):
            raise SftpConfigError("sftp connection: expected a connection mapping")
        extra = conn.get("extra") or {}
        if isinstance(extra, str):
            try:
                extra = json.loads(extra) if extra.strip() else {}
            except ValueError:
                raise SftpConfigError("sftp connection: 'extra' is not valid JSON") from None
        if not isinstance(extra, dict):
            raise SftpConfigError("sftp connection: 'extra' must be a JSON object")
        host = conn.get("host")
        if not host:
            raise SftpConfigError("sftp connection: 'host' is required")
        where = f"sftp connection to {host}"
        key = extra.get("private_key") or extra.get("private_key_file")
        if not key:
            raise SftpConfigError(f"{where}: extra.private_key or extra.private_key_file is required "
                                  "(key authentication only; the password is not used)")
        host_keys = extra.get("host_key") or extra.get("host_keys") or extra.get("known_hosts")
        if not host_keys:
            raise SftpConfigError(f"{where}: host keys must be pinned (extra.host_key or extra.known_hosts); "
                                  "unknown host keys are never accepted")
        remote = path or extra.get("path") or conn.get("schema") or "."
        return cls(host=host, port=conn.get("port") or 22, username=conn.get("login") or "",
                   private_key=key, host_keys=host_keys, path=remote,
                   passphrase=extra.get("private_key_passphrase") or None,
                   timeout=extra.get("timeout") or DEFAULT_TIMEOUT)

    def remote(self, name: str) -> str:
        return posixpath.join(self.path, check_name(name))


def _parse_host_keys(entries: Sequence[str], label: str) -> tuple:
    """(public keys, known_hosts objects) from the pinned entries; refuses an empty pin."""
    keys: list = []
    known: list = []
    lines: list[str] = []
    for entry in entries:
        entry = entry.strip()
        if "\n" not in entry and not _KEY_LINE.match(entry) and " " not in entry:
            p = Path(entry).expanduser()
            if not p.is_file():
                raise SftpConfigError(f"{label}: known_hosts file not found: {p}")
            try:
                known.append(asyncssh.import_known_hosts(p.read_text(encoding="utf-8")))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise SftpConfigError(f"{label}: known_hosts file {p} cannot be read ({type(exc).__name__})") from None
            continue
        lines.extend(entry.splitlines())
    kh_lines = []
    for line in (x.strip() for x in lines):
        if not line or line.startswith("#"):
            continue
        if _KEY_LINE.match(line):
            try:
                keys.append(asyncssh.import_public_key(line))
            except (asyncssh.KeyImportError, ValueError):
                raise SftpConfigError(f"{label}: a pinned host key is not a valid public key line") from None
        else:
            kh_lines.append(line)
    if kh_lines:
        try:
            known.append(asyncssh.import_known_hosts("\n".join(kh_lines) + "\n"))
        except ValueError:
            raise SftpConfigError(f"{label}: the pinned known_hosts lines are not valid") from None
    if not keys and not known:
        raise SftpConfigError(f"{label}: host keys must be pinned (public key lines or a known_hosts file); "
                              "unknown host keys are never accepted")
    return tuple(keys), tuple(known)


def _trusted(pinned: tuple) -> Callable:
    """asyncssh ``known_hosts`` callable: the pinned keys, plus the known_hosts entries matching
    the host. Never None (None would disable host key checking in asyncssh)."""
    keys, known = pinned

    def match(host, addr, port):
        out = [list(keys), [], [], [], [], [], []]
        for kh in known:
            for i, part in enumerate(kh.match(host, addr, port)):
                out[i].extend(part)
        return tuple(out)

    return match


def _host_key_algs(pinned: tuple, host: str, port: int) -> list[str]:
    """Host key algorithms to offer: the pinned keys' first, then every default one. Offering only
    the pinned types (asyncssh's default) makes a server with another key type fail the key
    exchange, which can surface as a lost connection (retried); offering the others too makes it
    present its key, which is then refused as not pinned (SftpHostKeyError, not retried)."""
    keys, known = pinned
    algs: list[bytes] = []
    cert = False
    for kh in known:
        try:
            m = kh.match(host, "", port if port != 22 else None)
        except ValueError:
            continue
        keys = (*keys, *m[0])
        cert = cert or bool(m[1])
    for k in keys:
        algs.extend(k.sig_algorithms)
    if cert:
        algs.extend(get_default_certificate_algs())
    algs.extend(get_default_public_key_algs())
    return list(dict.fromkeys(a.decode("ascii") for a in algs))


class SftpClient:
    """One SSH connection and SFTP session; use as ``with SftpClient(target) as c: ...``.

    asyncssh runs on a private event loop in a background thread, so callers stay synchronous and
    may themselves run inside an event loop. Not thread-safe: one client per task.
    """

    def __init__(self, target: SftpTarget):
        self.target = target
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn = None
        self._sftp = None

    # -- life cycle --

    def __enter__(self) -> "SftpClient":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hl7ics-sftp", daemon=True)
        self._thread.start()
        try:
            self._call("connect", self._connect)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            fut.result(self.target.timeout + 5)
        except Exception as exc:  # closing a dead connection must not mask the caller's error
            log.debug("sftp %s: close: %s", self.target.label, type(exc).__name__)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(self.target.timeout + 5)
        if not loop.is_running():
            loop.close()
        self._loop = self._thread = self._conn = self._sftp = None

    async def _connect(self):
        t = self.target
        key = _load_client_key(t)
        self._conn = await asyncssh.connect(
            t.host, t.port, username=t.username, client_keys=[key], known_hosts=_trusted(t._pinned),
            # Nothing from the user's ~/.ssh, no agent, no password, no GSS: only what is pinned here.
            server_host_key_algs=_host_key_algs(t._pinned, t.host, t.port),
            config=[], agent_path=None, password=None, passphrase=None, preferred_auth="publickey",
            gss_host=None, x509_trusted_certs=None, x509_trusted_cert_paths=[], client_host_keys=None,
            connect_timeout=t.timeout, login_timeout=t.timeout,
            # A server that vanishes without closing the connection is noticed between calls too.
            keepalive_interval=t.timeout, keepalive_count_max=3)
        self._sftp = await self._io(self._conn.start_sftp_client())

    async def _shutdown(self):
        if self._sftp is not None:
            self._sftp.exit()
        if self._conn is not None:
            self._conn.close()
            try:
                await asyncio.wait_for(self._conn.wait_closed(), self.target.timeout)
            except (asyncio.TimeoutError, asyncssh.Error, OSError):
                pass
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def _call(self, action: str, fn: Callable[..., Awaitable], *args) -> Any:
        """Run ``fn(*args)`` on the private loop; translate errors to ours, without secrets."""
        if self._loop is None:
            raise SftpError(f"{self.target.label}: {action}: the client is not open")
        label = self.target.label
        fut = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)
        try:
            return fut.result()
        except (SftpConfigError, SftpHostKeyError, SftpError):
            raise
        except asyncssh.HostKeyNotVerifiable:
            raise SftpHostKeyError(f"{label}: the server's host key matches none of the pinned host keys; "
                                   "connection refused") from None
        except asyncssh.KeyExchangeFailed as exc:
            if "host key" in str(exc).lower():
                raise SftpHostKeyError(f"{label}: the server offers no host key of a pinned type; "
                                       "connection refused") from None
            raise SftpError(f"{label}: {action} failed ({type(exc).__name__})") from None
        except asyncssh.PermissionDenied:
            raise SftpAuthError(f"{label}: the server refused key authentication for user "
                                f"{self.target.username}") from None
        except (asyncssh.Error, OSError, EOFError, asyncio.TimeoutError) as exc:
            raise SftpError(f"{label}: {action} failed ({type(exc).__name__})") from None
        except ValueError as exc:  # asyncssh refusing an option: a configuration problem
            raise SftpConfigError(f"{label}: {action}: invalid SSH settings ({type(exc).__name__})") from None

    async def _io(self, aw: Awaitable) -> Any:
        return await asyncio.wait_for(aw, self.target.timeout)

    # -- operations --

    def list(self, pattern: str = "*") -> list[RemoteFile]:
        """Regular files of the target directory whose name matches ``pattern`` (fnmatch, case
        sensitive), oldest first. Names that are not plain file names are skipped."""
        return self._call("list", self._list, pattern)

    async def _list(self, pattern: str) -> list[RemoteFile]:
        # Listed as bytes and decoded here: asyncssh's own decoding fails the whole listing on one
        # name that is not UTF-8, which would stop every file of the folder.
        names = await self._io(self._sftp.readdir(self.target.path.encode("utf-8")))
        out = []
        for entry in names:
            try:
                name = entry.filename.decode("utf-8") if isinstance(entry.filename, bytes) else entry.filename
                if name in (".", ".."):
                    continue
                check_name(name, MAX_LISTED_NAME_BYTES)
            except (UnicodeDecodeError, ValueError):
                log.warning("sftp %s: skipped a listed entry whose name is not a plain file name", self.target.label)
                continue
            a = entry.attrs
            regular = (a.type == asyncssh.FILEXFER_TYPE_REGULAR if a.type not in (None, asyncssh.FILEXFER_TYPE_UNKNOWN)
                       else a.permissions is not None and _stat.S_ISREG(a.permissions))
            if not regular or not fnmatch.fnmatchcase(name, pattern):
                continue
            out.append(RemoteFile(name, int(a.size or 0), float(a.mtime or 0)))
        return sorted(out, key=lambda f: (f.mtime, f.name))

    def download(self, name: str, local_path: str | os.PathLike) -> Transfer:
        """Download ``name`` to ``local_path`` through ``<local_path>.part``, resuming from the
        part's size; the size is verified before the rename into place."""
        check_name(name)
        return self._call("download", self._download, name, Path(local_path))

    async def _download(self, name: str, local: Path) -> Transfer:
        remote = self.target.remote(name)
        size = (await self._io(self._sftp.stat(remote))).size
        part = local.with_name(local.name + PART)
        local.parent.mkdir(parents=True, exist_ok=True)
        offset = part.stat().st_size if part.exists() else 0
        async with await self._io(self._sftp.open(remote, "rb")) as f:
            if offset and (offset > size or not await self._same_prefix_download(f, part, offset)):
                offset = 0
            resumed = offset
            with open(part, "r+b" if offset else "wb") as out:
                out.seek(offset)
                out.truncate()
                while offset < size:
                    data = await self._io(f.read(min(CHUNK, size - offset), offset))
                    if not data:
                        break
                    out.write(data)
                    out.flush()
                    offset += len(data)
                os.fsync(out.fileno())
        got = part.stat().st_size
        if got != size:
            raise SftpError(f"{self.target.label}: download incomplete ({got} of {size} bytes); it will resume")
        os.replace(part, local)
        return Transfer(name, size, resumed)

    def matches(self, name: str, local_path: str | os.PathLike) -> bool:
        """Whether the remote file ``name`` holds, at its start and at the end of ``local_path``'s
        length, the same 64 KiB as ``local_path`` (the whole file when it is under 128 KiB)."""
        check_name(name)
        local = Path(local_path)
        return self._call("verify", self._matches, name, local, local.stat().st_size)

    async def _matches(self, name: str, local: Path, size: int) -> bool:
        async with await self._io(self._sftp.open(self.target.remote(name), "rb")) as f:
            return await self._same_prefix_download(f, local, size)

    async def _same_prefix_download(self, f, part: Path, offset: int) -> bool:
        with open(part, "rb") as lf:
            for start in sorted({0, max(0, offset - VERIFY)}):
                n = min(VERIFY, offset - start)
                lf.seek(start)
                if await self._io(f.read(n, start)) != lf.read(n):
                    return False
        return True

    def upload(self, local_path: str | os.PathLike, name: str | None = None) -> Transfer:
        """Upload ``local_path`` as ``name`` (default: its file name): written to ``<name>.part``
        (resumed from its size), verified, then renamed over ``name`` in one step."""
        local = Path(local_path)
        name = check_name(name or local.name)
        if not local.is_file():
            raise SftpError(f"{self.target.label}: upload: local file {local.name} not found")
        return self._call("upload", self._upload, local, name)

    async def _upload(self, local: Path, name: str) -> Transfer:
        remote = self.target.remote(name)
        part = remote + PART
        size = local.stat().st_size
        try:
            offset = (await self._io(self._sftp.stat(part))).size or 0
        except asyncssh.SFTPNoSuchFile:
            offset = 0
        with open(local, "rb") as src:
            if offset and (offset > size or not await self._same_prefix_upload(src, part, offset)):
                offset = 0
            resumed = offset
            async with await self._io(self._sftp.open(part, "r+b" if offset else "wb")) as f:
                src.seek(offset)
                while offset < size:
                    data = src.read(CHUNK)
                    if not data:
                        break
                    await self._io(f.write(data, offset))
                    offset += len(data)
        got = (await self._io(self._sftp.stat(part))).size
        if got != size:
            raise SftpError(f"{self.target.label}: upload incomplete ({got} of {size} bytes); it will resume")
        await self._replace(part, remote)
        return Transfer(name, size, resumed)

    async def _same_prefix_upload(self, src, part: str, offset: int) -> bool:
        async with await self._io(self._sftp.open(part, "rb")) as f:
            for start in sorted({0, max(0, offset - VERIFY)}):
                n = min(VERIFY, offset - start)
                src.seek(start)
                if await self._io(f.read(n, start)) != src.read(n):
                    return False
        return True

    async def _replace(self, old: str, new: str) -> None:
        try:
            await self._io(self._sftp.posix_rename(old, new))
        except asyncssh.SFTPOpUnsupported:
            # Plain SFTP v3 rename refuses an existing target: remove it first. Readers may see no
            # file for an instant, never a partial one.
            try:
                await self._io(self._sftp.remove(new))
            except asyncssh.SFTPNoSuchFile:
                pass
            await self._io(self._sftp.rename(old, new))

    def remove(self, name: str) -> bool:
        """Remove ``name``; False when it did not exist (so a retried clean-up succeeds)."""
        check_name(name)
        return self._call("remove", self._remove, name)

    async def _remove(self, name: str) -> bool:
        try:
            await self._io(self._sftp.remove(self.target.remote(name)))
            return True
        except asyncssh.SFTPNoSuchFile:
            return False

    def rename(self, old: str, new: str) -> None:
        """Rename ``old`` to ``new`` in the target directory, replacing ``new`` if it exists
        (atomically on servers with the posix-rename extension, e.g. OpenSSH)."""
        check_name(old)
        check_name(new)
        self._call("rename", self._replace_names, old, new)

    async def _replace_names(self, old: str, new: str) -> None:
        await self._replace(self.target.remote(old), self.target.remote(new))

    def move_into(self, name: str, folder: str, new_name: str | None = None) -> str:
        """Move ``name`` into the sub-folder ``folder`` of the target directory (created if needed),
        e.g. to archive a file once it is committed; returns the new remote path."""
        check_name(name)
        check_name(new_name or name)
        if not isinstance(folder, str) or not folder or "\x00" in folder or ".." in folder.split("/") \
                or folder.startswith("/"):
            raise ValueError("the archive folder must be a relative path without '..'")
        self.makedirs(folder)
        dest = posixpath.join(self.target.path, folder, new_name or name)
        self._call("rename", self._replace, self.target.remote(name), dest)
        return dest

    def makedirs(self, path: str = ".") -> None:
        """Create ``path`` (relative to the target directory, or absolute) and its parents."""
        if not isinstance(path, str) or "\x00" in path or ".." in path.split("/"):
            raise ValueError("remote directory paths must not contain '..'")
        self._call("makedirs", self._makedirs, posixpath.join(self.target.path, path))

    async def _makedirs(self, path: str) -> None:
        path = posixpath.normpath(path)
        if path in (".", "/"):
            return
        await self._io(self._sftp.makedirs(path, exist_ok=True))


def _load_client_key(t: SftpTarget):
    """The private key from PEM/OpenSSH text or a file; errors name neither the key nor its text."""
    text = t.private_key
    try:
        if "-----BEGIN" in text:
            return asyncssh.import_private_key(text, t.passphrase)
        p = Path(text).expanduser()
        if not p.is_file():
            raise SftpConfigError(f"{t.label}: the private key file is not found (private_key_file)")
        return asyncssh.read_private_key(p, t.passphrase)
    except SftpConfigError:
        raise
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError, OSError) as exc:
        raise SftpConfigError(f"{t.label}: the private key cannot be read ({type(exc).__name__})") from None


__all__ = ["RemoteFile", "SftpAuthError", "SftpClient", "SftpConfigError", "SftpError", "SftpHostKeyError",
           "SftpTarget", "Transfer", "check_name"]
