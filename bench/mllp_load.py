"""The MLLP load client of the listener benchmark: many connections, each sending its next message
only after the previous ACK (closed loop), optionally at a fixed pace.

Input: a port, one list of framed-payloads per connection, an optional TLS context and pace.
Output: per message, the ACK latency (and the wall-clock time the ACK arrived).

Why not asyncio streams: the client shares this 2-core machine with the server it measures.
An asyncio client spent about as much CPU per message as the server did, so the benchmark
measured the client. One epoll loop over non-blocking sockets costs a fraction of that, and the
same client measures the reference server, so the comparison stays fair.
"""
from __future__ import annotations

import select
import socket
import ssl
import time

END = b"\x1c\r"


class _Conn:
    __slots__ = ("sock", "msgs", "i", "k", "sent_at", "buf", "due")

    def __init__(self, sock, msgs, i):
        self.sock = sock
        self.i = i  # position among the connections: its slot in the pacing schedule
        self.msgs = msgs
        self.k = 0
        self.sent_at = 0.0
        self.buf = b""
        self.due = 0.0


def _open(port: int, ctx: ssl.SSLContext | None):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx is not None:
        s = ctx.wrap_socket(s, server_hostname="localhost")  # handshake while still blocking
    s.setblocking(False)
    return s


def run(port: int, chunks: list[list[bytes]], ctx: ssl.SSLContext | None = None, pace: float | None = None,
        deadline_s: float | None = None) -> tuple[float, list[float], list[float]]:
    """Send every chunk on its own connection. Returns (messages/s, latencies s, ACK wall times).

    ``pace``: seconds between two sends on one connection (connections are staggered evenly);
    None = closed loop, the next message leaves as soon as the ACK arrives."""
    conns = [_Conn(_open(port, ctx), [b"\x0b" + m + END for m in ch], i) for i, ch in enumerate(chunks)]
    ep = select.epoll()
    by_fd = {}
    for c in conns:
        by_fd[c.sock.fileno()] = c
        ep.register(c.sock.fileno(), select.EPOLLIN)
    lat: list[float] = []
    acked_at: list[float] = []
    total = sum(len(c.msgs) for c in conns)
    clock = time.perf_counter
    t0 = clock()
    limit = t0 + (deadline_s if deadline_s is not None else 30 + total * ((pace or 0) + 0.05))
    waiting: list[_Conn] = []  # paced connections whose next send is not yet due

    def send(c: _Conn) -> None:
        c.sent_at = clock()
        c.sock.sendall(c.msgs[c.k])

    def next_message(c: _Conn) -> None:
        if pace is None:
            send(c)
        else:  # message k of connection i is due at slot k * n + i of the schedule
            c.due = t0 + (c.k * len(conns) + c.i) * pace / len(conns)
            waiting.append(c)

    for c in conns:
        next_message(c)
    done = 0
    try:
        while done < total:
            now = clock()
            if now > limit:
                raise TimeoutError(f"load client: {total - done} ACKs missing at the deadline")
            timeout = 1.0
            if waiting:
                for c in [c for c in waiting if c.due <= now]:
                    waiting.remove(c)
                    send(c)
                timeout = max(0.0, min((c.due for c in waiting), default=now + 1.0) - clock())
            for fd, _ in ep.poll(timeout):
                c = by_fd[fd]
                try:
                    data = c.sock.recv(65536)
                    if ctx is not None:
                        while c.sock.pending():
                            data += c.sock.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue
                if not data:
                    raise ConnectionError("server closed a connection before all ACKs arrived")
                buf = c.buf + data
                while True:
                    j = buf.find(END)
                    if j < 0:
                        break
                    if b"MSA|AA|" not in buf[:j]:
                        # A benchmark of refusals would flatter the server: every ACK must be AA.
                        raise AssertionError(f"load client: not an AA: {buf[:j].split(b'MSA')[-1][:40]!r}")
                    buf = buf[j + 2:]
                    t = clock()
                    lat.append(t - c.sent_at)
                    acked_at.append(time.time())
                    done += 1
                    c.k += 1
                    if c.k < len(c.msgs):
                        next_message(c)
                c.buf = buf
    finally:
        ep.close()
        for c in conns:
            c.sock.close()
    return total / (clock() - t0), lat, acked_at
