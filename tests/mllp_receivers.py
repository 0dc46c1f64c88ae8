"""Scripted MLLP receivers for outbound tests and benchmarks.

``ScriptedReceiver`` is an asyncio MLLP server on 127.0.0.1 in a thread of the test process
(plain or TLS). For every frame it records the payload, then asks ``behaviour(payload)`` what to
do: "AA"/"CA" accept, "AE"/"AR"/"CE"/"CR" answer with an ERR segment (``errors`` maps the code to
an HL7 table 0357 error), "silent" never answers (the sender's ACK timeout), "close" closes the
connection without answering, "wrong_id" answers AA for another control ID (a late reply). The ACK is built by the project's own ``transforms.ack.build_ack``
(MSA-2 = the received MSH-10). It can be stopped and started again on the same port (a receiver
that is down for a while).

``AA_ONLY_SERVER`` is the source of a trivial AA-only receiver to run in its own process
(benchmarks: the sender and the receiver do not share a GIL).
"""
from __future__ import annotations

import asyncio
import ssl
import threading

from listener_support import free_port

from transforms.ack import AckPlan, build_ack
from transforms.mllp import Framer, frame
from transforms.outbound import control_id_of
from transforms.parser import parse

ERRORS = {"AE": 207, "CE": 207, "AR": 200, "CR": 200}


class ScriptedReceiver:
    def __init__(self, behaviour=None, port: int | None = None, tls: ssl.SSLContext | None = None,
                 errors: dict | None = None):
        self.behaviour = behaviour or (lambda payload: "AA")
        self.port = port or free_port()
        self.tls = tls
        self.errors = {**ERRORS, **(errors or {})}
        self.received: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._writers: set = set()
        self._thread: threading.Thread | None = None

    @property
    def control_ids(self) -> list[str | None]:
        return [control_id_of(p) for p in self.received]

    def start(self) -> "ScriptedReceiver":
        ready = threading.Event()
        failure: list[BaseException] = []

        def run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.tls))
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"receiver-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    async def _shutdown(self) -> None:
        self._server.close()
        for w in list(self._writers):
            w.close()
        await asyncio.sleep(0)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = self._server = None

    def __enter__(self) -> "ScriptedReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        framer = Framer()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                for f in framer.push(data):
                    self.received.append(f.payload)
                    action = self.behaviour(f.payload)
                    if action == "silent":
                        continue
                    if action == "close":
                        return
                    payload = f.payload
                    if action == "wrong_id":
                        ctrl = (control_id_of(payload) or "").encode()
                        payload, action = payload.replace(b"|" + ctrl + b"|", b"|LATE-" + ctrl + b"|", 1), "AA"
                    plan = AckPlan(action, hl7_error=self.errors.get(action, 0))
                    writer.write(frame(build_ack(parse(payload), plan)))
                    await writer.drain()
        except (ConnectionError, ssl.SSLError, OSError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()


AA_ONLY_SERVER = r"""
import asyncio, sys
VT, END = b"\x0b", b"\x1c\r"

def ack(msg):
    fs = msg[3:4]
    msh = msg.split(b"\r", 1)[0].split(fs)
    return (b"MSH" + fs + msh[1] + fs + msh[4] + fs + msh[5] + fs + msh[2] + fs + msh[3] + fs + b"" + fs + fs
            + b"ACK" + fs + b"A" + msh[9] + fs + b"P" + fs + msh[11] + b"\rMSA" + fs + b"AA" + fs + msh[9] + b"\r")

async def handle(reader, writer):
    buf = b""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            buf += data
            while END in buf:
                end = buf.index(END)
                msg = buf[buf.index(VT) + 1:end]
                buf = buf[end + 2:]
                writer.write(VT + ack(msg) + END)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()

async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    open(sys.argv[2], "w").write("up")
    async with srv:
        await srv.serve_forever()

asyncio.run(main())
"""
