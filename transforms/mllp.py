"""MLLP framing (0x0B payload 0x1C 0x0D) and a small MLLP client.

``Framer`` turns a byte stream (any fragmentation: 1-byte TCP segments, TLS records) into frames:
bytes before 0x0B are discarded and counted (never logged), a frame larger than the limit stops
being buffered, and an end block not followed by 0x0D is accepted leniently when configured
(followed by LF, by the next frame's 0x0B, by a pause or by the connection's end; bad inputs 1, 4,
5, 6, 9, 10, 11). Pipelined frames in one read are kept in order. A start
block inside an open frame starts a new frame: the cut one is discarded unacknowledged.

``send`` is the client behind ``hl7ics send`` and the outbound MLLP destination: it frames each
message, waits for the reply frame, and returns the ACK bytes.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from .ack import control_id_of, parse_ack

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


@dataclass
class Frame:
    payload: bytes
    truncated: bool = False  # larger than max_frame: only the first max_frame bytes are kept
    lenient_end: bool = False  # 0x1C was followed by LF or the connection end, not CR
    embedded_fs: bool = False  # 0x1C followed by other data: the frame was cut inside its content


class Framer:
    """Incremental MLLP deframer with a hard cap on buffered bytes."""

    def __init__(self, max_frame: int = 16 << 20, lenient_end: bool = True):
        self.max_frame = max_frame
        self.lenient_end = lenient_end
        self.pending = bytearray()  # input not yet consumed
        self.buf = bytearray()  # payload of the frame being read
        self.in_frame = False
        self.garbage = 0  # bytes discarded outside frames
        self.overflow = 0  # bytes dropped from an oversized frame
        self.restarts = 0  # frames cut short by the start of another
        self.frame_started_at: float | None = None
        self.frames_started = 0  # tells one frame from the next (the rate window restarts)

    @property
    def partial(self) -> bool:
        return self.in_frame

    @property
    def received(self) -> int:
        """Bytes of the open frame so far (the deadline grows with them)."""
        return len(self.buf) + self.overflow

    @property
    def awaiting_end(self) -> bool:
        """The open frame's 0x1C is the last byte received: only the CR after it is missing."""
        return self.in_frame and self.pending == FS

    def _append(self, chunk) -> None:
        room = self.max_frame - len(self.buf)
        if room >= len(chunk):
            self.buf += chunk
        else:
            if room > 0:
                self.buf += chunk[:room]
            self.overflow += len(chunk) - max(room, 0)

    def _emit(self, lenient: bool, embedded: bool = False) -> Frame:
        f = Frame(bytes(self.buf), truncated=self.overflow > 0, lenient_end=lenient, embedded_fs=embedded)
        self.buf.clear()
        self.overflow = 0
        self.in_frame = False
        self.frame_started_at = None
        return f

    def push(self, data: bytes, now: float = 0.0) -> list[Frame]:
        out: list[Frame] = []
        p = self.pending
        p += data
        while p:
            if not self.in_frame:
                j = p.find(0x0B)
                if j < 0:
                    self.garbage += len(p)
                    p.clear()
                    break
                self.garbage += j
                del p[:j + 1]
                self.in_frame = True
                self.frame_started_at = now
                self.frames_started += 1
                continue
            j = p.find(0x1C)
            k = p.find(0x0B, 0, j if j >= 0 else len(p))
            if k >= 0:
                # A start block inside an open frame: the frame was cut short (no end block, so
                # no ACK, and its sender sends it again). Its bytes are discarded like any outside
                # a frame, and a new frame starts here: the next message is neither lost nor
                # spliced into the cut one (and acknowledged under its control ID).
                self.garbage += len(self.buf) + self.overflow + k
                self.restarts += 1
                self.buf.clear()
                self.overflow = 0
                del p[:k + 1]
                self.frame_started_at = now
                self.frames_started += 1
                continue
            if j < 0:
                self._append(p)
                p.clear()
                break
            self._append(p[:j])
            del p[:j]
            if len(p) < 2:
                break  # 0x1C is the last byte so far: wait for the next one
            nxt = p[1]
            if nxt == 0x0D:
                del p[:2]
                out.append(self._emit(False))
            elif nxt == 0x0A and self.lenient_end:
                del p[:2]
                out.append(self._emit(True))
            elif nxt == 0x0B and self.lenient_end:
                # 0x1C then the next frame's 0x0B: a sender that never sends the CR, pipelining.
                del p[:1]
                out.append(self._emit(True))
            else:
                # 0x1C inside content (bad input 11) ends the frame; what follows is garbage
                # until the next 0x0B.
                del p[:1]
                out.append(self._emit(True, embedded=True))
        return out

    def close(self) -> list[Frame]:
        """At connection end (or after a pause, ``awaiting_end``), a frame whose 0x1C arrived
        without the CR is complete if lenient."""
        if self.in_frame and bytes(self.pending) == FS and self.lenient_end:
            self.pending.clear()
            return [self._emit(True)]
        return []


def frame(payload: bytes) -> bytes:
    return VT + payload + FS + CR


def client_ssl_context(cafile: str | None = None, certfile: str | None = None, keyfile: str | None = None,
                       verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def send(host: str, port: int, messages: list[bytes], ssl_ctx: ssl.SSLContext | None = None,
               timeout: float = 30.0, server_hostname: str | None = None) -> list[bytes | None]:
    """Send messages on one connection, one at a time, returning each reply (None on timeout). A
    reply is matched to its message by MSA-2: a frame acknowledging another control ID (a late
    reply, an application ACK) is skipped, never credited to the message just sent."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ssl_ctx, server_hostname=server_hostname if ssl_ctx else None),
        timeout)
    framer = Framer()
    acks: list[bytes | None] = []
    pending: list[Frame] = []
    try:
        for m in messages:
            writer.write(frame(m))
            await writer.drain()
            control = control_id_of(m)
            reply = None
            while reply is None:
                if pending:
                    payload = pending.pop(0).payload
                    code, ctrl, _err = parse_ack(payload)
                    if control and code is not None and ctrl != control:
                        continue
                    reply = payload
                    break
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout)
                except asyncio.TimeoutError:
                    break
                if not data:
                    pending.extend(framer.close())
                    if not pending:
                        break
                    continue
                pending.extend(framer.push(data))
            acks.append(reply)
            if reply is None:
                break
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:
            pass
    return acks
