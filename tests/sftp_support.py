"""A real SFTP server for tests: asyncssh on 127.0.0.1 and a free port, in a background thread.

Key authentication only (the generated client key is the only authorised key), a generated ed25519
host key, each session chrooted to ``root``. ``drop_next_session_after(n)`` makes the next SFTP
session abort its connection once it has served ``n`` bytes (reads and writes counted together):
a dropped connection mid-transfer, for the resume tests. ``sessions`` counts the bytes each SFTP
session read and wrote; ``connections`` counts accepted connections, ``logins`` successful
authentications.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

import asyncssh


@dataclass
class SessionStats:
    bytes_read: int = 0      # served to the client (downloads)
    bytes_written: int = 0   # received from the client (uploads)
    dropped: bool = False


class _Server(asyncssh.SSHServer):
    def __init__(self, owner: "SftpServer"):
        self.owner = owner

    def connection_made(self, conn) -> None:
        self.owner.connections += 1

    def auth_completed(self) -> None:
        self.owner.logins += 1


class _SFTP(asyncssh.SFTPServer):
    def __init__(self, chan, owner: "SftpServer"):
        super().__init__(chan, chroot=str(owner.root))
        self.stats = SessionStats()
        self.budget = owner._take_budget()
        owner.sessions.append(self.stats)

    def _spend(self, n: int) -> None:
        """Abort the whole connection (no reply) when this request would pass the budget."""
        if self.budget is None:
            return
        if n > self.budget:
            self.stats.dropped = True
            self.channel.get_connection().abort()
            raise asyncssh.SFTPConnectionLost("dropped by the test server")
        self.budget -= n

    def read(self, file_obj, offset, size):
        data = super().read(file_obj, offset, size)
        self._spend(len(data))
        self.stats.bytes_read += len(data)
        return data

    def write(self, file_obj, offset, data):
        self._spend(len(data))
        n = super().write(file_obj, offset, data)
        self.stats.bytes_written += len(data)
        return n


class SftpServer:
    def __init__(self, root: Path, username: str = "partner"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.username = username
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.host_key_line = self._host_key.export_public_key().decode().strip()
        self.client_private_key_pem = self._client_key.export_private_key().decode()
        self.client_public_key_line = self._client_key.export_public_key().decode().strip()
        self.sessions: list[SessionStats] = []
        self.connections = 0   # TCP connections accepted
        self.logins = 0        # successful key authentications
        self._budget: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor = None

    # -- control --

    def drop_next_session_after(self, nbytes: int) -> None:
        self._budget = nbytes

    def _take_budget(self) -> int | None:
        b, self._budget = self._budget, None
        return b

    def connection(self, path: str = "/") -> dict:
        """The Airflow-style connection dict for ``SftpTarget.from_connection``."""
        return {"conn_type": "sftp", "host": self.host, "port": self.port, "login": self.username,
                "password": None, "schema": None,
                "extra": {"private_key": self.client_private_key_pem, "host_key": self.host_key_line, "path": path}}

    # -- life cycle --

    def start(self) -> "SftpServer":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sftp-test-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(30)
        return self

    async def _listen(self):
        self._acceptor = await asyncssh.listen(
            self.host, 0, server_factory=lambda: _Server(self), server_host_keys=[self._host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(self.client_public_key_line + "\n"),
            sftp_factory=lambda chan: _SFTP(chan, self), allow_scp=False, gss_host=None)
        self.port = self._acceptor.get_port()

    async def _close(self):
        self._acceptor.close()
        await self._acceptor.wait_closed()
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()
            self._loop = None

    def __enter__(self) -> "SftpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
