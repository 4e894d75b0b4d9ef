"""Hostile input to the service: answered as client errors, never counted as server ones (the
critical HighInferenceErrorRate alert reads inference_errors_total), and never stalling the
event loop."""

import base64
import io
import logging
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from servers import serving
from test_admin import TOKEN, call
from test_serve import Client, count, run_with_client

from inferwatch.models import InputError, open_image
from inferwatch.models.digits import digit_png
from inferwatch.serve.admin import create_admin_app
from inferwatch.serve.app import ServeConfig, create_app
from inferwatch.serve.faults import Faults
from inferwatch.serve.workers import config_from_json, config_to_json


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_png(side: int) -> bytes:
    """A valid side x side RGBA PNG of zeros, built without holding its pixels: every row is
    the same deflate block (a full flush resets the window), so 13300x13300 (0.7 GB decoded)
    is under 1 MB and takes milliseconds to make."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    row = compressor.compress(bytes(1 + side * 4)) + compressor.flush(zlib.Z_FULL_FLUSH)
    size = side * (1 + side * 4)
    adler = ((size % 65521) << 16) | 1  # adler32 of zeros
    stream = b"\x78\xda" + row * side + b"\x03\x00" + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream)
            + _chunk(b"IEND", b""))


def test_zero_png_is_a_valid_image() -> None:
    image = Image.open(io.BytesIO(zero_png(40)))
    image.load()
    assert image.size == (40, 40) and image.mode == "RGBA" and not image.getbbox()


JSON_ROUTES = ["/predictions/digits", "/v2/models/digits/infer",
               "/v2/models/digits/versions/1/infer", "/feedback"]
BAD_JSON = [
    b"[" * 60_000,  # cut off: the parser recurses until Python's limit
    b"[" * 1500 + b"]" * 1500,
    b'{"a": ' * 1500 + b"1" + b"}" * 1500,
    b'{"inputs": [{"shape": [1, 64], "data": [' + b"1" * 5000 + b"]}]}",  # int beyond 4300 digits
]


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize("body", BAD_JSON, ids=["open", "nested-lists", "nested-objects",
                                                "huge-int"])
def test_json_too_deep_or_with_a_huge_int_gets_400_on_every_json_route(path: str,
                                                                      body: bytes) -> None:
    async def test(c: Client, reg: CollectorRegistry) -> None:
        r = await c.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        oip = path.startswith("/v2/")  # OIP's form: the message in "error"
        assert r.json()["reason" if oip else "error"] == "invalid_json"
        assert r.json()["error" if oip else "message"]
        if path == "/feedback":
            assert reg.get_sample_value("inference_feedback_rejected_total",
                                        {"reason": "invalid_json"}) == 1
        else:
            assert count(reg, "inference_error_reasons_total", reason="invalid_json") == 1
        assert count(reg, "inference_errors_total") == 0

    run_with_client(test)


def test_v2_datatype_is_not_echoed_whole() -> None:
    """Once echoed with repr: megabytes back, or a RecursionError for a list nested deep."""
    async def test(c: Client, reg: CollectorRegistry) -> None:
        for datatype in (b"[" * 900 + b"]" * 900, b'"' + b"x" * 100_000 + b'"'):
            body = b'{"inputs": [{"shape": [1, 64], "datatype": ' + datatype + b', "data": []}]}'
            r = await c.post("/v2/models/digits/infer", content=body)
            assert r.status_code == 422 and r.json()["reason"] == "invalid_shape"
            assert len(r.json()["error"]) < 100
        assert count(reg, "inference_errors_total") == 0

    run_with_client(test)


def _send_and_close(url: str, request: bytes) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request)


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_body_cut_off_is_counted_as_client_closed_with_no_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """The client sends part of its body and goes away: nobody to answer, a client error."""
    registry = CollectorRegistry()
    app = create_app(ServeConfig(), registry)
    cut_off = []
    for path in ("/predictions/digits", "/v2/models/digits/infer"):
        head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        cut_off.append(f"{head}Content-Length: 100000\r\n\r\n0123456789".encode())
        cut_off.append(f"{head}Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n".encode())
    caplog.set_level(logging.INFO)
    # log_config None: uvicorn's own loggers then propagate to caplog's handler
    with serving(app, log_config=None) as url:
        for request in cut_off:
            _send_and_close(url, request)
        r = httpx.post(f"{url}/v2/models/digits/infer", content=b"[" * 1500)
        assert r.status_code == 400 and r.json()["reason"] == "invalid_json"
        _wait_for(lambda: count(registry, "inference_error_reasons_total",
                                reason="client_closed") == len(cut_off), "client_closed")
    assert count(registry, "inference_errors_total") == 0
    assert count(registry, "inference_error_reasons_total", reason="internal") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], \
        caplog.text


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # over 89 Mpx
def test_image_beyond_the_pixel_budget_gets_413_before_it_is_decoded() -> None:
    bomb = zero_png(13_300)  # under Pillow's own limit (179 Mpx): it would decode 0.7 GB
    with pytest.raises(InputError) as refused:
        open_image(bomb, 4096 * 4096)
    assert refused.value.reason == "image_too_large"

    async def test(c: Client, reg: CollectorRegistry) -> None:
        r = await c.post("/predictions/digits", content=bomb,
                         headers={"content-type": "image/png"})
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "image_too_large" and "13300x13300" in r.json()["message"]
        assert count(reg, "inference_error_reasons_total", reason="image_too_large") == 1
        assert count(reg, "inference_errors_total") == 0

    run_with_client(test)  # the default budget


def test_undecodable_and_non_raster_images_get_400_without_internals() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)).save(
        noise, "PNG")
    truncated = noise.getvalue()[:500]

    async def test(c: Client, reg: CollectorRegistry) -> None:
        for body in (b"hello", eps, truncated):
            r = await c.post("/predictions/digits", content=body)
            assert r.status_code == 400, r.text
            assert r.json()["error"] == "invalid_image"
            assert "0x" not in r.text and "BytesIO" not in r.text, r.text
        assert count(reg, "inference_error_reasons_total", reason="invalid_image") == 3

    run_with_client(test)


def test_pixel_budget_applies_to_raw_and_base64_images() -> None:
    small, large = digit_png(np.zeros((8, 8), np.float32)), zero_png(16)

    async def test(c: Client, reg: CollectorRegistry) -> None:
        for png in (small, large):
            raw = await c.post("/predictions/digits", content=png)
            encoded = await c.post("/predictions/digits",
                                   json={"image_base64": base64.b64encode(png).decode()})
            expected = 200 if png is small else 413
            assert raw.status_code == encoded.status_code == expected, raw.text
        assert count(reg, "inference_error_reasons_total", reason="image_too_large") == 2

    run_with_client(test, ServeConfig(max_image_pixels=8 * 8))


def test_the_pixel_budget_travels_to_worker_processes() -> None:
    config = ServeConfig(max_image_pixels=1234)
    assert config_from_json(config_to_json(config)).max_image_pixels == 1234


def test_serve_takes_max_image_pixels() -> None:
    """The option reaches the service: `inferwatch serve` in its own process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferwatch", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--max-image-pixels", "64", "--log-level", "warning"])
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, "serve exited"
            try:
                return httpx.get(f"{url}/ping").status_code == 200
            except httpx.TransportError:
                return False

        _wait_for(up, "serve to start", 60)
        assert httpx.post(f"{url}/predictions/digits",
                          content=digit_png(np.zeros((8, 8), np.float32))).status_code == 200
        r = httpx.post(f"{url}/predictions/digits", content=zero_png(9))
        assert r.status_code == 413 and r.json()["error"] == "image_too_large"
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_large_image_decodes_off_the_event_loop() -> None:
    """Once the image is sent, the loop answers /ping again and again while it decodes
    (16 Mpx, within the default budget: 0.5 s or more here, 175 pings against 2 when it
    was decoded on the loop)."""
    app = create_app(ServeConfig(), CollectorRegistry())
    image = zero_png(4000)
    request = (f"POST /predictions/digits HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
               f"Content-Length: {len(image)}\r\n\r\n").encode() + image
    with serving(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        client.get("/ping")  # connected before the image is sent
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            answer = bytearray()
            reader = threading.Thread(
                target=lambda: answer.extend(b"".join(iter(lambda: sock.recv(65536), b""))))
            reader.start()
            sock.sendall(request)
            pings = 0
            while reader.is_alive():
                assert client.get("/ping").status_code == 200
                pings += reader.is_alive()
            reader.join()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert pings >= 10, f"{pings} pings answered while the image decoded"


def test_an_image_without_a_grey_conversion_gets_400() -> None:
    buffer = io.BytesIO()
    Image.new("LAB", (32, 32)).save(buffer, "TIFF")  # Pillow has no LAB to L

    async def test(c: Client, reg: CollectorRegistry) -> None:
        r = await c.post("/predictions/digits", content=buffer.getvalue())
        assert r.status_code == 400 and r.json()["error"] == "invalid_image", r.text
        assert count(reg, "inference_errors_total") == 0

    run_with_client(test)


def test_decoding_threads_stop_with_the_service() -> None:
    def decoders() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("inferwatch-decode")]

    async def test(c: Client, reg: CollectorRegistry) -> None:
        assert (await c.post("/predictions/digits", content=zero_png(100))).status_code == 200
        assert decoders()

    run_with_client(test)
    assert not decoders()


def test_admin_refuses_json_nested_too_deep() -> None:
    r = call(create_admin_app(Faults(), TOKEN), "POST", "/admin/faults/errors",
             content=b"[" * 1500)
    assert r.status_code == 400 and r.json()["error"] == "invalid JSON"


def test_a_slash_too_many_is_404_not_a_redirect_to_the_host_header() -> None:
    async def test(c: Client, reg: CollectorRegistry) -> None:
        r = await c.get("/ping/", headers={"host": "attacker.invalid"})
        assert r.status_code == 404 and "location" not in r.headers
        assert count(reg, "inference_errors_total") == 0

    run_with_client(test)
