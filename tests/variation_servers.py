"""Loopback variation servers for tests: the real ``VariationServer``, optionally misbehaving.

Faults are switched per server: ``fail_every`` (every k-th POST answers 503), ``fail_after``
(every POST after the first k answers 500, as an endpoint whose quota ran out), ``delay``
(seconds before answering, for timeouts), ``garbage`` (200 with a body that is no image) and
``required_header`` (401 without it). ``served`` counts the variations actually delivered.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from cdi_audit.blackbox.server import VariationHandler, VariationServer
from cdi_audit.blackbox.variation import LocalVariation


@dataclass
class Faults:
    fail_every: int | None = None
    fail_after: int | None = None
    delay: float = 0.0
    garbage: bool = False
    required_header: tuple[str, str] | None = None


class FaultyHandler(VariationHandler):
    server: FaultyServer

    def do_POST(self) -> None:
        faults = self.server.faults
        with self.server.count_lock:
            self.server.posts += 1
            post = self.server.posts
        if faults.required_header is not None:
            name, value = faults.required_header
            if self.headers.get(name) != value:
                self._drain_and_reply(401, b"unauthorised\n")
                return
        if faults.delay:
            time.sleep(faults.delay)
        if faults.fail_every is not None and post % faults.fail_every == 0:
            self._drain_and_reply(503, b"busy\n")
            return
        if faults.fail_after is not None and self.server.calls >= faults.fail_after:
            self._drain_and_reply(500, b"quota exhausted\n")
            return
        if faults.garbage:
            self._drain_and_reply(200, b"<html>surprise</html>")
            return
        super().do_POST()

    def _drain_and_reply(self, status: int, body: bytes) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply(status, "text/plain", body)


class FaultyServer(VariationServer):
    def __init__(self, backend: LocalVariation, faults: Faults) -> None:
        super().__init__(("127.0.0.1", 0), backend)
        self.RequestHandlerClass = FaultyHandler
        self.faults = faults
        self.posts = 0
        self.count_lock = threading.Lock()

    @property
    def served(self) -> int:
        return self.calls


@contextlib.contextmanager
def running_server(backend: LocalVariation, faults: Faults | None = None) -> Iterator[FaultyServer]:
    """A server on a free loopback port, serving in a thread until the block ends."""
    server = FaultyServer(backend, faults or Faults())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
