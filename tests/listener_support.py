"""Helpers for tests that run the real listener as a separate process (as in production)."""
from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import weakref
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ListenerProcess:
    def __init__(self, tmp: Path, warehouse_url: str, port: int | None = None, tls: dict | None = None, **limits):
        self.tmp = tmp
        self.url = warehouse_url
        self.port = port or free_port()
        self.tls = tls or {}
        self.cfg = tmp / f"listener-{self.port}.yaml"
        conf = {"host": "127.0.0.1", "port": self.port, "metrics_port": 0, **limits}
        self.cfg.write_text(yaml.safe_dump({"listener": conf}))
        self.metrics_port = conf["metrics_port"]
        self.proc: subprocess.Popen | None = None
        self.log = tmp / f"listener-{self.port}.log"

    def start(self, timeout: float = 20.0) -> "ListenerProcess":
        ready = self.tmp / f"ready-{self.port}"
        if ready.exists():
            ready.unlink()
        args = [sys.executable, "-m", "transforms.cli", "listen", "--warehouse", self.url,
                "--listener-config", str(self.cfg), "--ready-file", str(ready)]
        for k in ("tls_cert", "tls_key", "tls_client_ca"):
            if self.tls.get(k):
                args += [f"--{k.replace('_', '-')}", str(self.tls[k])]
        env = {**os.environ, "HL7ICS_LOG_LEVEL": "INFO"}
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"), env=env, cwd=ROOT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready.exists() and ready.read_text().strip():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"listener exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("listener did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=20)
        return self.proc.returncode if self.proc else 0


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


_LEFTOVER: "weakref.WeakKeyDictionary[socket.socket, bytes]" = weakref.WeakKeyDictionary()


def read_frame(sock: socket.socket) -> bytes | None:
    """One reply frame, or None if the peer closed or nothing came before the timeout. Bytes of
    the next frames received in the same read are kept for the next call (pipelined ACKs)."""
    buf = _LEFTOVER.pop(sock, b"")
    try:
        while FS + CR not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf += chunk
    except (socket.timeout, ConnectionError):
        return None
    end = buf.find(FS + CR)
    start = buf.find(VT)
    if buf[end + 2:]:
        _LEFTOVER[sock] = buf[end + 2:]
    return buf[start + 1:end]


def exchange(port: int, payload: bytes, timeout: float = 10.0) -> bytes | None:
    with connect(port, timeout) as s:
        s.sendall(VT + payload + FS + CR)
        return read_frame(s)


def msa(ack: bytes | None) -> tuple[str, str] | None:
    if ack is None:
        return None
    for seg in ack.split(b"\r"):
        if seg.startswith(b"MSA"):
            parts = seg.decode().split(seg.decode()[3])
            return parts[1], parts[2] if len(parts) > 2 else ""
    return None


def err_code(ack: bytes) -> str | None:
    for seg in ack.split(b"\r"):
        if seg.startswith(b"ERR"):
            f = seg.decode().split("|")
            return f[3].split("^")[0] if len(f) > 3 and f[3] else f[1].split("^")[3].split("&")[0]
    return None


def make_certs(d: Path) -> dict:
    """A private CA, a server certificate for 127.0.0.1/localhost, two client certificates from the
    CA (CHU-SO's and an unmapped one) and one from an unknown CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.timezone.utc)

    def cert(subject_key, cn, issuer_key, issuer_name, ca=False, san=None):
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer_name)
             .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(path, obj):
        if hasattr(obj, "public_bytes") and not hasattr(obj, "private_bytes"):
            path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
        else:
            path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return path

    out = {}
    ca_key = key()
    ca = cert(ca_key, "hl7ics test CA", ca_key, name("hl7ics test CA"), ca=True)
    out["ca"] = write(d / "ca.pem", ca)
    sk = key()
    srv = cert(sk, "localhost", ca_key, ca.subject,
               san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    out["server_cert"], out["server_key"] = write(d / "server.pem", srv), write(d / "server.key", sk)
    for label, cn in (("chu", "chu-so.test"), ("other", "stranger.test")):
        k = key()
        c = cert(k, cn, ca_key, ca.subject)
        out[f"{label}_cert"], out[f"{label}_key"] = write(d / f"{label}.pem", c), write(d / f"{label}.key", k)
    rogue_key = key()
    rogue_ca = cert(rogue_key, "rogue CA", rogue_key, name("rogue CA"), ca=True)
    k = key()
    c = cert(k, "chu-so.test", rogue_key, rogue_ca.subject)
    out["rogue_cert"], out["rogue_key"] = write(d / "rogue.pem", c), write(d / "rogue.key", k)
    return out
