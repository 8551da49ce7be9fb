"""``cdi-audit serve`` refuses an upload that declares more pixels than it decodes, before decoding it."""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from variation_servers import running_server

from cdi_audit.blackbox.server import MAX_UPLOAD_SIDE, VariationServer, check_declared_size
from cdi_audit.blackbox.variation import EndpointInfo, VariationRequest, decode_png, encode_png


class EchoBackend:
    """Answers every request with its own image, and counts the requests that reached it."""

    info = EndpointInfo(sample_size=16, family="pixel")

    def __init__(self) -> None:
        self.requests = 0

    def vary(self, request: VariationRequest) -> np.ndarray:
        self.requests += 1
        return request.image


def png_of(width: int, height: int) -> bytes:
    """A 1-bit PNG: all black, so even 12000 x 12000 compresses to a few KB."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def post(server: VariationServer, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(server.url + "?strength=0.2&seed=5", data=body, method="POST",
                                     headers={"Content-Type": "image/png"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# PIL warns of a possible decompression bomb when it reads such a header; the server then refuses it.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_upload_declaring_144_megapixels_is_refused_before_decoding() -> None:
    huge = png_of(12000, 12000)
    assert len(huge) < 64 * 1024  # small on disk; decoded as RGB it would be 432 MB
    backend = EchoBackend()
    with running_server(backend) as server:
        started = time.perf_counter()
        status, body = post(server, huge)
        elapsed = time.perf_counter() - started
        small = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3)).astype(np.uint8)
        accepted, varied = post(server, encode_png(small))
    assert status == 400
    assert body.decode() == ("the image declares 12000 x 12000 pixels, and this server decodes at most 4096 x 4096; "
                             "send it at the model's resolution\n")
    assert elapsed < 1.0  # decoding it first took seconds
    assert backend.requests == 1 and server.calls == 1  # only the small image reached the model
    assert accepted == 200 and np.array_equal(decode_png(varied), small)


def test_the_limit_is_on_the_declared_pixels() -> None:
    check_declared_size(png_of(MAX_UPLOAD_SIDE, MAX_UPLOAD_SIDE))  # at the limit: decoded as before
    with pytest.raises(ValueError, match=f"declares {MAX_UPLOAD_SIDE + 1} x {MAX_UPLOAD_SIDE} pixels"):
        check_declared_size(png_of(MAX_UPLOAD_SIDE + 1, MAX_UPLOAD_SIDE))
    check_declared_size(b"not an image")  # left to decode_png, which says so
    with pytest.raises(ValueError, match="not an image"):
        decode_png(b"not an image")
