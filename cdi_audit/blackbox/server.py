"""``cdi-audit serve``: a local model behind the cdi-audit-variation/1 HTTP protocol.

For providers who want to offer auditors black-box access without handing over weights, and
for testing. One request at a time reaches the model (a lock); the threaded server keeps
accepting connections meanwhile. See ``blackbox/endpoints.py`` for the protocol.
"""

from __future__ import annotations

import io
import ipaddress
import json
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from cdi_audit.blackbox.variation import LocalVariation, VariationRequest, decode_png, encode_png

MAX_BODY_BYTES = 64 * 1024 * 1024
# A PNG of a few KB may declare a huge image, and decoding it costs time and memory in proportion to its
# pixels (144 megapixels: seconds and hundreds of MB) before the model sees it; the size is in the header,
# so larger images are refused before decoding. 4096 x 4096 is far above any model's resolution (8-bit RGB:
# 48 MiB decoded).
MAX_UPLOAD_SIDE = 4096
MAX_UPLOAD_PIXELS = MAX_UPLOAD_SIDE * MAX_UPLOAD_SIDE


class VariationServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], backend: LocalVariation) -> None:
        super().__init__(address, VariationHandler)
        self.backend = backend
        self.model_lock = threading.Lock()
        self.calls = 0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"


class VariationHandler(BaseHTTPRequestHandler):
    server: VariationServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._reply(HTTPStatus.OK, "application/json", json.dumps(self.server.backend.info.as_json()).encode())

    def do_POST(self) -> None:
        try:
            request = self._parse()
        except ValueError as error:
            self._reply(HTTPStatus.BAD_REQUEST, "text/plain", f"{error}\n".encode())
            return
        try:
            with self.server.model_lock:
                image = self.server.backend.vary(request)
                self.server.calls += 1
        except ValueError as error:
            self._reply(HTTPStatus.BAD_REQUEST, "text/plain", f"{error}\n".encode())
            return
        except Exception as error:  # the model failed: say so, and keep serving
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", f"{type(error).__name__}\n".encode())
            return
        self._reply(HTTPStatus.OK, "image/png", encode_png(image))

    def _parse(self) -> VariationRequest:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY_BYTES:
            raise ValueError(f"send the image as a PNG body of at most {MAX_BODY_BYTES} bytes")
        content = self.rfile.read(length)
        check_declared_size(content)
        image = decode_png(content)
        try:
            strength = float(query["strength"])
            seed = int(query["seed"])
            label = int(query["class_label"]) if "class_label" in query else None
        except (KeyError, ValueError):
            raise ValueError("give strength (a number in [0, 1)) and seed (an integer) in the query") from None
        if not 0.0 <= strength < 1.0:
            raise ValueError("strength must lie in [0, 1)")
        return VariationRequest(image, strength, seed, query.get("prompt"), label)

    def _reply(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass  # one line per call would bury the console; the caller counts calls


def check_declared_size(content: bytes) -> None:
    """Refuse an image whose header declares more than ``MAX_UPLOAD_PIXELS``, without decoding its pixels
    (PIL reads the header only until ``load``); what is no image at all is left to ``decode_png`` to say."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # PIL's own, higher limit, met while reading the header
        raise ValueError(_too_large(f"over {2 * Image.MAX_IMAGE_PIXELS} pixels")) from None
    except (OSError, SyntaxError):
        return
    if width * height > MAX_UPLOAD_PIXELS:
        raise ValueError(_too_large(f"{width} x {height} pixels"))


def _too_large(size: str) -> str:
    return (f"the image declares {size}, and this server decodes at most {MAX_UPLOAD_SIDE} x {MAX_UPLOAD_SIDE}; "
            "send it at the model's resolution")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
