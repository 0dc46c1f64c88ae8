"""Pluggable sources of facility files.

A source lists the files that are ready to ingest and, once a file is committed to the warehouse,
finishes it (archive, move or delete at the origin). The ingest pipeline only sees local paths and
calls the source back after the commit, so a source never loses a file it has not handed over.

Input: ``Settings`` and one configured ``config.Source`` of a facility. Output: ``SourceRef``s
(JSON-able: they travel through XCom between the DAG's pull and load tasks).

Implemented here: ``folder`` and ``sftp`` (both hand over files); the RabbitMQ ``queue`` source
delivers messages, not files, and is consumed by ``transforms.queue_source`` (ack after commit).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Protocol

from .config import ConfigError, Facility, Settings
from .config import Source as SourceConfig
from .errors import SourceError

# stable_size on SFTP: files first seen in a run are listed again after stable_seconds, within the
# run, when that is at most this long (longer waits are left to the next run).
STABLE_WAIT_MAX = 60

SourceRef = dict  # {"source": type, "ref": str, "name": str}


class Source(Protocol):
    type: str

    def ready(self, now: float | None = None) -> list[SourceRef]: ...

    def local_path(self, ref: SourceRef) -> Path: ...

    def finish(self, ref: SourceRef, sha256: str, copy: Path | None = None) -> str | None: ...


class FolderSource:
    """A drop folder on this host (or a mounted share)."""

    type = "folder"

    def __init__(self, settings: Settings, facility: Facility, config: SourceConfig, resolve_connection=None):
        self.settings = settings
        self.facility = facility
        self.options = config.options
        p = Path(config.path)
        self.folder = p if p.is_absolute() else settings.data_dir / p

    def ready(self, now: float | None = None) -> list[SourceRef]:
        """Files ready to ingest, oldest first. Partial uploads are left alone: ``*.tmp``/``*.part``
        names under ``tmp_rename``, files modified in the last ``stable_seconds`` under ``stable_size``."""
        if not self.folder.is_dir():
            return []
        now = time.time() if now is None else now
        out: list[tuple[float, str]] = []
        for p in self.folder.glob(self.options.get("glob", "*.hl7")):
            # Symlinks could point anywhere on the host; only regular files uploaded here count.
            if p.is_symlink() or not p.is_file() or upload_in_progress(p.name):
                continue
            st = p.stat()
            if not settled(self.options, st.st_mtime, now):
                continue
            out.append((st.st_mtime, str(p)))
        return [{"source": self.type, "ref": p, "name": Path(p).name} for _, p in sorted(out)]

    def local_path(self, ref: SourceRef) -> Path:
        return Path(ref["ref"])

    def finish(self, ref: SourceRef, sha256: str, copy: Path | None = None) -> str | None:
        return archive_local(self.settings, self.facility.code, Path(ref["ref"]), sha256)


def upload_in_progress(name: str) -> bool:
    """Whether a file name is one still being written: hidden (many SFTP and rsync clients write
    ``.name`` and rename it), or the ``.tmp``/``.part`` names of the ``tmp_rename`` convention."""
    return name.startswith(".") or name.endswith((".tmp", ".part"))


def settled(options: dict, mtime: float, now: float) -> bool:
    """Whether a file is done uploading under the ``stable_size`` rule (untouched for
    ``stable_seconds``); under ``tmp_rename`` its final name already says so."""
    if options.get("partial_upload", "tmp_rename") != "stable_size":
        return True
    return now - mtime >= int(options.get("stable_seconds", 30))


def archive_local(settings: Settings, facility_code: str, path: Path, sha256: str) -> str | None:
    """Move a committed local file to ``$HL7ICS_HOME/archive/<facility>/<sha256>.hl7`` (idempotent)."""
    if not path.exists():
        return None
    dest_dir = settings.home / "archive" / facility_code
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{sha256}.hl7"
    try:
        if dest.exists():
            path.unlink()  # same content already archived (a re-upload)
        else:
            shutil.move(str(path), dest)
    except OSError as exc:
        raise SourceError(f"cannot archive file for facility {facility_code}: {type(exc).__name__}") from None
    return str(dest)


class SftpSource:
    """A facility's SFTP server (key authentication, pinned host key). Files are downloaded
    (resumably) into a local cache, staged and loaded; the remote file is moved to its ``archive``
    folder (or deleted, ``after: delete``) only in ``finish``, which the pipeline calls after the
    commit — a crash in between downloads the file again, and the ledger recognises it."""

    type = "sftp"

    def __init__(self, settings: Settings, facility: Facility, config: SourceConfig, resolve_connection=None):
        from .alerting import connection_from_env

        self.settings = settings
        self.facility = facility
        self.options = config.options
        self.resolve = resolve_connection or connection_from_env
        self.cache = settings.home / "sftp-cache" / facility.code
        self._shared = None  # the client of an open session()

    @contextlib.contextmanager
    def session(self):
        """One SSH connection for every call inside (listing, downloads, finishing): one per
        file could be refused by a server that limits connections (MaxStartups)."""
        if self._shared is not None:
            yield self
            return
        with self._client() as c:
            self._shared = c
            try:
                yield self
            finally:
                self._shared = None

    def _open(self):
        return contextlib.nullcontext(self._shared) if self._shared is not None else self._client()

    def _client(self):
        from .sftp import SftpClient, SftpTarget

        conn = self.resolve(self.options["conn_id"])
        if not conn:
            raise ConfigError(f"sftp source of {self.facility.code}: connection {self.options['conn_id']} is not defined")
        return SftpClient(SftpTarget.from_connection(conn, path=self.options.get("path", "/")))

    @property
    def origin(self) -> str:
        """Which of the facility's SFTP sources a ref came from (it may have several)."""
        return f"{self.options.get('conn_id')}:{self.options.get('path', '/')}"

    def ready(self, now: float | None = None) -> list[SourceRef]:
        import fnmatch

        pattern = self.options.get("glob", "*.hl7")

        def listing(c):
            return [f for f in c.list(pattern) if fnmatch.fnmatch(f.name, pattern)
                    and not upload_in_progress(f.name)]

        with self._open() as c:
            files = listing(c)
            if self.options.get("partial_upload", "tmp_rename") == "stable_size":
                files = self._stable(c, files, listing)
        return [{"source": self.type, "ref": f.name, "name": f.name, "size": f.size, "mtime": f.mtime,
                 "origin": self.origin} for f in sorted(files, key=lambda f: (f.mtime, f.name))]

    def _stable(self, c, files: list, listing) -> list:
        """The files whose size and modification time have not changed for ``stable_seconds``
        by our own clock: the server's clock may be behind (a file still being written looked
        old) or ahead (a finished file never looked old). What each listing saw is kept between
        runs; files not seen long enough are listed again once after ``stable_seconds`` when that
        is at most ``STABLE_WAIT_MAX``, so a new file need not wait for the next run."""
        secs = int(self.options.get("stable_seconds", 30))
        path = self.cache / ".listings.json"
        try:
            seen = json.loads(path.read_text(encoding="utf-8")).get(self.origin, {})
        except (OSError, ValueError):
            seen = {}

        def judge(listed: list) -> tuple[list, list]:
            clock = time.time()
            done, waiting = [], []
            for f in listed:
                o = seen.get(f.name)
                if o is None or (o[0], o[1]) != (f.size, f.mtime):
                    seen[f.name] = o = [f.size, f.mtime, clock]
                (done if clock - o[2] >= secs else waiting).append(f)
            return done, waiting

        done, waiting = judge(files)
        if waiting and secs <= STABLE_WAIT_MAX:
            time.sleep(secs)
            names = {f.name for f in waiting}
            more, _ = judge([f for f in listing(c) if f.name in names])
            done += more
        listed = {f.name for f in files}
        try:
            doc = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except (OSError, ValueError):
            doc = {}
        doc[self.origin] = {k: v for k, v in seen.items() if k in listed}
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, path)
        return done

    def local_path(self, ref: SourceRef) -> Path:
        # One folder per source: two folders of one facility may both have a file of this name,
        # and a partial download of one must never be resumed with the other's bytes.
        d = self.cache / hashlib.sha256(self.origin.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        d.mkdir(parents=True, exist_ok=True)
        local = d / Path(ref["ref"]).name
        with self._open() as c:
            c.download(ref["ref"], local)  # resumes a .part left by an interrupted attempt
        return local

    def finish(self, ref: SourceRef, sha256: str, copy: Path | None = None) -> str | None:
        """Move (or delete) the remote file, only if it is still what was staged: the size staged,
        the modification time listed before the download, and the first and last 64 KiB of the
        staged ``copy``. A file that grew or was replaced since (a sender still writing, or
        re-sending under the same name, even with the same size in the same second) stays, and
        the next run loads its new content; a file already gone (moved by an attempt that stopped
        before recording it) counts as finished."""
        with self._open() as c:
            current = [f for f in c.list(self.options.get("glob", "*.hl7")) if f.name == ref["ref"]]
            if not current:
                return None
            staged = ref.get("staged_size")
            if staged is not None and current[0].size != staged:
                return None
            if ref.get("mtime") is not None and current[0].mtime != ref["mtime"]:
                return None
            if copy is not None and copy.exists() and not c.matches(ref["ref"], copy):
                return None
            if self.options.get("after", "move") == "delete":
                c.remove(ref["ref"])
                return f"sftp:deleted:{ref['ref']}"
            return "sftp:" + c.move_into(ref["ref"], self.options.get("archive", "archive"),
                                         f"{sha256[:16]}-{Path(ref['ref']).name}")


SOURCE_TYPES: dict[str, type] = {"folder": FolderSource, "sftp": SftpSource}


def sources_for(settings: Settings, facility: Facility, resolve_connection=None) -> list[Source]:
    """Instances of the facility's configured sources whose type is implemented.
    ``resolve_connection``: how connections are found (Airflow's resolver inside a task, so a
    secrets backend works; None: ``AIRFLOW_CONN_*`` variables only)."""
    return [SOURCE_TYPES[s.type](settings, facility, s, resolve_connection)
            for s in facility.sources if s.type in SOURCE_TYPES]


def session(src: Source):
    """``src.session()`` where the source has one (a connection shared by its calls), else nothing."""
    return src.session() if hasattr(src, "session") else contextlib.nullcontext(src)


def source_for_ref(settings: Settings, facility: Facility, ref: SourceRef, resolve_connection=None,
                   among: list[Source] | None = None) -> Source:
    """The configured source a staged ref came from (``among``: sources already made, reused)."""
    for s in among if among is not None else sources_for(settings, facility, resolve_connection):
        # Refs staged before "origin" existed name only the type: the first such source.
        if s.type == ref["source"] and ref.get("origin") in (None, getattr(s, "origin", None)):
            return s
    raise SourceError(f"facility {facility.code} has no {ref['source']} source configured")
