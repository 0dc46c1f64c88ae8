"""SFTP client and file delivery against a real asyncssh SFTP server on loopback (tests/sftp_support.py):
key authentication, pinned host keys, resumable transfers, atomic delivery, no secrets in errors."""
from __future__ import annotations

import json
import logging
import os
import threading

import asyncssh
import pytest

from sftp_support import SftpServer
from transforms.config import ConfigError
from transforms.delivery import deliver
from transforms.errors import SourceError
from transforms.sftp import (VERIFY, SftpAuthError, SftpClient, SftpConfigError, SftpError, SftpHostKeyError,
                             SftpTarget)

BIG = 1_200_000      # several transfer chunks (transforms.sftp.CHUNK is 256 KiB)
DROP_AT = 600_000    # the test server aborts the connection once a session has moved this many bytes


@pytest.fixture
def server(tmp_path):
    srv = SftpServer(tmp_path / "remote").start()
    yield srv
    srv.stop()


def _target(server, path="/", **over) -> SftpTarget:
    conn = server.connection(path)
    conn["extra"].update(over.pop("extra", {}))
    conn.update(over)
    return SftpTarget.from_connection(conn)


def _secret_fragments(server) -> list[str]:
    """The private key's text, line by line (any line leaking would be a leak)."""
    body = [ln for ln in server.client_private_key_pem.splitlines() if ln and not ln.startswith("-----")]
    return [server.client_private_key_pem] + body


def _no_sftp_threads():
    return not any(t.name == "hl7ics-sftp" and t.is_alive() for t in threading.enumerate())


def test_list_download_upload_remove_rename(server, tmp_path):
    root = server.root
    (root / "inbox").mkdir()
    (root / "inbox" / "b.hl7").write_bytes(b"MSH|^~\\&|B\r")
    (root / "inbox" / "a.hl7").write_bytes(os.urandom(BIG))
    (root / "inbox" / "notes.txt").write_bytes(b"x")
    (root / "inbox" / "sub").mkdir()
    os.utime(root / "inbox" / "a.hl7", (1_700_000_000, 1_700_000_000))
    os.utime(root / "inbox" / "b.hl7", (1_700_000_100, 1_700_000_100))
    target = _target(server, "/inbox")
    with SftpClient(target) as c:
        listed = c.list("*.hl7")
        assert [(f.name, f.size, f.mtime) for f in listed] == [
            ("a.hl7", BIG, 1_700_000_000.0), ("b.hl7", 11, 1_700_000_100.0)]  # oldest first, no dirs
        assert {f.name for f in c.list()} == {"a.hl7", "b.hl7", "notes.txt"}

        got = c.download("a.hl7", tmp_path / "local" / "a.hl7")
        assert (got.name, got.size, got.resumed_from) == ("a.hl7", BIG, 0)
        assert (tmp_path / "local" / "a.hl7").read_bytes() == (root / "inbox" / "a.hl7").read_bytes()
        assert not (tmp_path / "local" / "a.hl7.part").exists()

        src = tmp_path / "out.hl7"
        src.write_bytes(os.urandom(BIG // 2))
        up = c.upload(src, "up.hl7")
        assert (up.size, up.resumed_from) == (BIG // 2, 0)
        assert (root / "inbox" / "up.hl7").read_bytes() == src.read_bytes()
        assert not (root / "inbox" / "up.hl7.part").exists()

        c.rename("up.hl7", "done.hl7")
        assert not (root / "inbox" / "up.hl7").exists()
        assert (root / "inbox" / "done.hl7").read_bytes() == src.read_bytes()
        c.rename("b.hl7", "done.hl7")  # replaces an existing name
        assert (root / "inbox" / "done.hl7").read_bytes() == b"MSH|^~\\&|B\r"

        assert c.remove("done.hl7") is True
        assert c.remove("done.hl7") is False  # already gone: a retried clean-up succeeds
        assert not (root / "inbox" / "done.hl7").exists()

        c.makedirs("archive/2026/11")
        assert (root / "inbox" / "archive" / "2026" / "11").is_dir()
        c.makedirs("archive/2026/11")  # exists: fine
    assert server.logins == 1
    assert _no_sftp_threads()


def test_chroot_and_unsafe_names(server, tmp_path):
    (server.root / "in").mkdir()
    (server.root / "in" / "ok.hl7").write_bytes(b"ok")
    (server.root / "in" / "back\\slash.hl7").write_bytes(b"x")
    (server.root / "in" / "line\nbreak.hl7").write_bytes(b"x")
    (server.root / "in" / "link.hl7").symlink_to(server.root / "in" / "ok.hl7")
    (tmp_path / "secret.txt").write_text("outside the chroot")
    with SftpClient(_target(server, "/in")) as c:
        assert [f.name for f in c.list()] == ["ok.hl7"]  # unsafe names and symlinks skipped
        for bad in ("../secret.txt", "a/b.hl7", "..", ".", "", "x\\y"):
            with pytest.raises(ValueError):
                c.download(bad, tmp_path / "dl")
            with pytest.raises(ValueError):
                c.remove(bad)
        with pytest.raises(ValueError):
            c.upload(tmp_path / "secret.txt", "../escape.txt")
        with pytest.raises(ValueError):
            c.makedirs("../up")
    assert not (tmp_path / "dl").exists()
    assert not (server.root / "escape.txt").exists()
    with pytest.raises(SftpConfigError):
        _target(server, "/in/../..")


def test_wrong_pinned_host_key_is_refused_and_nothing_is_transferred(server, tmp_path):
    (server.root / "a.hl7").write_bytes(b"data")
    src = tmp_path / "up.hl7"
    src.write_bytes(b"upload")
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    other_type = asyncssh.generate_private_key("ecdsa-sha2-nistp256").export_public_key().decode().strip()
    for pinned in (impostor, other_type):
        target = _target(server, extra={"host_key": pinned})
        with pytest.raises(SftpHostKeyError) as err:
            with SftpClient(target) as c:
                c.download("a.hl7", tmp_path / "a.hl7")
        msg = str(err.value)
        assert "127.0.0.1" in msg
        for key in (pinned, server.host_key_line):
            assert key.split()[1] not in msg
        assert err.value.__cause__ is None and err.value.__suppress_context__
        with pytest.raises(SftpHostKeyError):
            with SftpClient(target) as c:
                c.upload(src, "up.hl7")
    assert server.connections == 4
    assert server.logins == 0 and server.sessions == []  # refused before authenticating
    assert not (tmp_path / "a.hl7").exists() and not (tmp_path / "a.hl7.part").exists()
    assert sorted(p.name for p in server.root.iterdir()) == ["a.hl7"]
    assert _no_sftp_threads()
    # A wrong host key is not a transient I/O error: the retry policy must not retry it.
    assert not isinstance(err.value, OSError)


def test_known_hosts_file_and_lines(server, tmp_path):
    (server.root / "a.hl7").write_bytes(b"data")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"# partner\n[127.0.0.1]:{server.port} {server.host_key_line}\n")
    with SftpClient(_target(server, extra={"host_key": None, "known_hosts": str(kh)})) as c:
        assert [f.name for f in c.list()] == ["a.hl7"]
    # known_hosts lines given inline work too
    with SftpClient(_target(server, extra={"host_key": f"[127.0.0.1]:{server.port} {server.host_key_line}"})) as c:
        assert [f.name for f in c.list()] == ["a.hl7"]
    # the right key, but recorded for another host: not trusted for this one
    kh.write_text(f"[partner.example.tg]:{server.port} {server.host_key_line}\n")
    with pytest.raises(SftpHostKeyError):
        with SftpClient(_target(server, extra={"host_key": None, "known_hosts": str(kh)})):
            pass
    with pytest.raises(SftpConfigError, match="known_hosts file not found"):
        _target(server, extra={"host_key": None, "known_hosts": str(tmp_path / "missing")})


def test_a_connection_without_pinned_host_keys_is_refused(server):
    for extra in ({"host_key": None}, {"host_key": ""}, {"host_key": "# only a comment\n\n"}):
        with pytest.raises(SftpConfigError, match="host keys must be pinned"):
            _target(server, extra=extra)
    with pytest.raises(SftpConfigError, match="host keys must be pinned"):
        SftpTarget(server.host, server.port, "partner", server.client_private_key_pem, (), "/")
    with pytest.raises(SftpConfigError, match="not a valid public key"):
        _target(server, extra={"host_key": "ssh-ed25519 AAAAnotakey"})
    assert server.connections == 0


def test_key_authentication_only(server, tmp_path):
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    with pytest.raises(SftpAuthError, match="refused key authentication for user partner"):
        with SftpClient(_target(server, extra={"private_key": stranger})):
            pass
    # a password alone is not enough: key authentication only
    with pytest.raises(SftpConfigError, match="key authentication only"):
        _target(server, password="pw", extra={"private_key": None})
    # a key file and an encrypted key with its passphrase
    key_file = tmp_path / "id_ed25519"
    key_file.write_text(server.client_private_key_pem)
    with SftpClient(_target(server, extra={"private_key": None, "private_key_file": str(key_file)})) as c:
        assert c.list() == []
    enc = asyncssh.import_private_key(server.client_private_key_pem).export_private_key(
        "pkcs8-pem", passphrase="correct horse")
    with SftpClient(_target(server, extra={"private_key": enc.decode(),
                                           "private_key_passphrase": "correct horse"})) as c:
        assert c.list() == []
    with pytest.raises(SftpConfigError, match="private key cannot be read"):
        with SftpClient(_target(server, extra={"private_key": enc.decode(),
                                               "private_key_passphrase": "wrong battery"})):
            pass
    assert server.logins == 2
    assert _no_sftp_threads()


def test_download_resumes_after_a_dropped_connection(server, tmp_path):
    data = os.urandom(BIG)
    (server.root / "big.hl7").write_bytes(data)
    local = tmp_path / "in" / "big.hl7"
    target = _target(server)
    server.drop_next_session_after(DROP_AT)
    with pytest.raises(SftpError) as err:
        with SftpClient(target) as c:
            c.download("big.hl7", local)
    assert isinstance(err.value, SourceError)  # retried by the Airflow retry policy
    assert server.sessions[0].dropped
    part = local.with_name("big.hl7.part")
    partial = part.stat().st_size
    assert 0 < partial < BIG and not local.exists()
    assert part.read_bytes() == data[:partial]

    with SftpClient(target) as c:
        got = c.download("big.hl7", local)
    assert got.resumed_from == partial
    assert local.read_bytes() == data and not part.exists()
    # the second session sent the rest (plus the resume check), not the whole file again
    assert server.sessions[1].bytes_read <= BIG - partial + 2 * VERIFY
    assert server.sessions[1].bytes_read < BIG


def test_a_stale_partial_download_is_restarted(server, tmp_path):
    data = os.urandom(BIG // 3)
    (server.root / "f.hl7").write_bytes(data)
    local = tmp_path / "f.hl7"
    local.with_name("f.hl7.part").write_bytes(os.urandom(100_000))  # left by another version
    with SftpClient(_target(server)) as c:
        got = c.download("f.hl7", local)
    assert got.resumed_from == 0 and local.read_bytes() == data


def test_upload_resumes_and_the_receiver_never_sees_a_partial_file(server, tmp_path):
    (server.root / "out").mkdir()
    old = os.urandom(1000)
    (server.root / "out" / "claims.csv").write_bytes(old)  # yesterday's delivery under the same name
    new = os.urandom(BIG)
    src = tmp_path / "claims.csv"
    src.write_bytes(new)
    target = _target(server, "/out")
    server.drop_next_session_after(DROP_AT)
    with pytest.raises(SftpError):
        with SftpClient(target) as c:
            c.upload(src)
    remote_part = server.root / "out" / "claims.csv.part"
    partial = remote_part.stat().st_size
    assert 0 < partial < BIG
    # the receiver's name still holds the previous complete file, never the partial one
    assert (server.root / "out" / "claims.csv").read_bytes() == old
    with SftpClient(target) as c:
        assert [(f.name, f.size) for f in c.list("*.csv")] == [("claims.csv", 1000)]
        got = c.upload(src)
    assert got.resumed_from == partial
    assert server.sessions[1].bytes_written == BIG - partial
    assert (server.root / "out" / "claims.csv").read_bytes() == new
    assert not remote_part.exists()


def test_a_stale_partial_upload_is_restarted(server, tmp_path):
    (server.root / "stale.csv.part").write_bytes(os.urandom(50_000))
    src = tmp_path / "stale.csv"
    src.write_bytes(os.urandom(120_000))
    with SftpClient(_target(server)) as c:
        got = c.upload(src)
    assert got.resumed_from == 0
    assert (server.root / "stale.csv").read_bytes() == src.read_bytes()
    assert server.sessions[0].bytes_written == 120_000


def test_deliver_to_an_outbox_twice_leaves_one_identical_file(tmp_path):
    files = []
    for name, body in (("claims_INAM_2026-11_v1.csv", b"claim_id;amount\nC1;12000\n"),
                       ("manifest.json", b'{"claims": 1}')):
        p = tmp_path / "build" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(body)
        files.append(p)
    outbox = tmp_path / "outbox" / "inam" / "2026-11"
    for _ in range(2):
        res = deliver(files, {"type": "outbox", "path": str(outbox)})
        assert res == {"target": f"outbox:{outbox.resolve()}", "files": 2, "status": "delivered"}
        assert sorted(p.name for p in outbox.iterdir()) == sorted(f.name for f in files)
        for f in files:
            assert (outbox / f.name).read_bytes() == f.read_bytes()


def test_a_relative_outbox_is_under_the_data_dir(tmp_path, hl7ics_home):
    f = tmp_path / "x.csv"
    f.write_bytes(b"x;1\n")
    res = deliver([f], {"type": "outbox", "path": "outbox/cnss"})
    dest = (hl7ics_home / "data" / "outbox" / "cnss").resolve()
    assert res["target"] == f"outbox:{dest}"
    assert (dest / "x.csv").read_bytes() == b"x;1\n"


def test_deliver_over_sftp_twice_is_idempotent(server, tmp_path, monkeypatch):
    conn = server.connection("/ignored")
    conn["password"] = "never-used-pw"
    monkeypatch.setenv("AIRFLOW_CONN_INAM_SFTP", json.dumps(conn))
    files = []
    for name in ("claims_INAM_2026-11_v1.csv", "manifest.json"):
        p = tmp_path / name
        p.write_bytes(os.urandom(300_000))
        files.append(p)
    spec = {"type": "sftp", "conn_id": "inam_sftp", "path": "/inbox/claims"}
    for _ in range(2):
        res = deliver(files, spec)  # default resolver: AIRFLOW_CONN_<ID>, as outside Airflow
        assert res == {"target": f"sftp://127.0.0.1:{server.port}/inbox/claims", "files": 2, "status": "delivered"}
        remote = server.root / "inbox" / "claims"
        assert sorted(p.name for p in remote.iterdir()) == sorted(f.name for f in files)
        for f in files:
            assert (remote / f.name).read_bytes() == f.read_bytes()
    assert not (server.root / "ignored").exists()
    assert "never-used-pw" not in json.dumps(res)


def test_deliver_refuses_bad_specs(server, tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("x")
    with pytest.raises(ConfigError, match="'type' must be one of outbox, sftp"):
        deliver([f], {"type": "ftp", "path": "/x"})
    with pytest.raises(ConfigError, match="'path'"):
        deliver([f], {"type": "outbox"})
    with pytest.raises(ConfigError, match="conn_id"):
        deliver([f], {"type": "sftp", "path": "/x"})
    with pytest.raises(ConfigError, match="connection nowhere is not defined"):
        deliver([f], {"type": "sftp", "conn_id": "nowhere", "path": "/x"}, resolve_connection=lambda _id: None)
    other = tmp_path / "sub"
    other.mkdir()
    (other / "a.csv").write_text("y")
    with pytest.raises(ConfigError, match="two files are named a.csv"):
        deliver([f, other / "a.csv"], {"type": "outbox", "path": str(tmp_path / "o")})
    with pytest.raises(SourceError, match="not found"):
        deliver([tmp_path / "missing.csv"], {"type": "outbox", "path": str(tmp_path / "o")})
    conn = server.connection()
    conn["extra"]["host_key"] = None
    with pytest.raises(SftpConfigError, match="host keys must be pinned"):
        deliver([f], {"type": "sftp", "conn_id": "x", "path": "/x"}, resolve_connection=lambda _id: conn)

    def broken(_id):
        raise RuntimeError("vault said: token s.SECRET123")
    with pytest.raises(SourceError) as err:
        deliver([f], {"type": "sftp", "conn_id": "x", "path": "/x"}, resolve_connection=broken)
    assert "SECRET123" not in str(err.value)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert server.connections == 0


def test_secrets_never_appear_in_errors_results_or_logs(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    (server.root / "big.hl7").write_bytes(os.urandom(BIG))
    secrets = _secret_fragments(server) + ["correct horse", "pw-in-connection"]
    texts: list[str] = []

    def capture(fn):
        try:
            fn()
        except Exception as exc:  # every error path below must raise; collect its text
            texts.extend([str(exc), repr(exc)])
            return
        raise AssertionError("expected an error")

    enc = asyncssh.import_private_key(server.client_private_key_pem).export_private_key(
        "pkcs8-pem", passphrase="correct horse").decode()
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()

    def use(**extra):
        def run():
            with SftpClient(_target(server, password="pw-in-connection", extra=extra)) as c:
                c.download("big.hl7", tmp_path / "big.hl7")
        return run

    capture(use(host_key=impostor))                                          # wrong host key
    capture(use(private_key=asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()))
    capture(use(private_key=enc, private_key_passphrase="wrong"))            # bad passphrase
    capture(use(private_key=server.client_private_key_pem.replace("b", "c")))  # damaged key text
    capture(use(private_key=server.client_private_key_pem.split("\n", 2)[1]))  # key body, no armour
    capture(use(host_key=None))                                              # nothing pinned
    server.drop_next_session_after(DROP_AT)
    capture(use())                                                           # dropped mid-transfer
    target = _target(server, password="pw-in-connection")
    texts += [repr(target), str(target)]
    f = tmp_path / "x.csv"
    f.write_text("x")
    conn = server.connection("/out")
    conn["password"] = "pw-in-connection"
    texts.append(json.dumps(deliver([f], {"type": "sftp", "conn_id": "c", "path": "/out"},
                                    resolve_connection=lambda _id: conn)))
    texts.append(caplog.text)
    blob = "\n".join(texts)
    assert "127.0.0.1" in blob
    for s in secrets:
        assert s not in blob
    assert _no_sftp_threads()


def test_the_client_works_from_inside_a_running_event_loop(server):
    # e.g. called from a coroutine (the triggerer): the client's own loop runs in its own thread.
    import asyncio

    (server.root / "a.hl7").write_bytes(b"x")

    async def caller():
        with SftpClient(_target(server)) as c:
            return [f.name for f in c.list()]

    assert asyncio.run(caller()) == ["a.hl7"]
    assert _no_sftp_threads()
