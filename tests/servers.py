"""Servers for the openai backend's tests: llama-cpp-python's real OpenAI-compatible server on
127.0.0.1, and a tiny misbehaving HTTP server for the faults a real server cannot be made to
produce on demand (garbage answers, a stream that drops mid-answer, 503s)."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SERVER_MODULES = ("httpx", "llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")


def have_server_deps() -> bool:
    """True when httpx and llama-cpp-python's server extra are installed."""
    return all(importlib.util.find_spec(m) is not None for m in SERVER_MODULES)


needs_server = pytest.mark.skipif(not have_server_deps(),
                                  reason="llama_cpp.server's deps or httpx missing (pip install -e '.[server,dev]')")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def llama_server(model: Path, startup_s: float = 90.0) -> Iterator[str]:
    """Run ``python -m llama_cpp.server`` on the model on 127.0.0.1; yield its ``/v1`` URL.

    ``--interrupt_requests False``: by default this server cuts a streaming answer short when
    another request arrives, which would defeat the concurrency pass.
    """
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
                                 "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1",
                                 "--interrupt_requests", "False"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + startup_s
            while True:  # bounded by the deadline
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}: {log.read()[-2000:]!r}")
                try:
                    if httpx.get(f"{url}/models", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server not ready within {startup_s} s")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _chunk(text: str, finish: str | None = None) -> bytes:
    payload = {"choices": [{"text": text, "index": 0, "finish_reason": finish}]}
    return f"data: {json.dumps(payload)}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    """Answers as ``server.mode`` says; /v1/models is fine except in mode ``garbage``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.server.mode == "garbage":  # type: ignore[attr-defined]
            self._send(200, b"<html>this is not an API</html>", "text/html")
        else:
            self._send(200, json.dumps({"data": [{"id": "fake"}]}).encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        mode = self.server.mode  # type: ignore[attr-defined]
        if not self.path.endswith("/v1/completions"):
            self._send(404, b'{"error": "not found"}')
            return
        if mode == "flaky":
            self.server.hits += 1  # type: ignore[attr-defined]
            if self.server.hits <= 2:  # type: ignore[attr-defined]
                self._send(503, b'{"error": "loading"}')
                return
        if not body.get("stream"):
            self._send(200, json.dumps({"choices": [{"text": " ok", "finish_reason": "length"}]}).encode())
            return
        if mode == "not-sse":
            self._send(200, b'{"choices": [{"text": " Paris"}]}')
        elif mode == "bad-lines":
            self._send(200, b"hello\nthis is not an event stream\n\n", "text/event-stream")
        elif mode == "drop":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            data = _chunk(" Par") + _chunk("is")
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.write(b"400\r\npartial")  # a chunk cut short, then the connection closes
            self.wfile.flush()
            self.close_connection = True
        else:  # "flaky" once it recovers: a good stream
            data = _chunk(" Par") + _chunk("is", "length") + b"data: [DONE]\n\n"
            self._send(200, data, "text/event-stream")


@contextmanager
def fake_server(mode: str) -> Iterator[str]:
    """A misbehaving server on 127.0.0.1 in ``mode`` (garbage, not-sse, bad-lines, drop, flaky)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.mode = mode  # type: ignore[attr-defined]
    server.hits = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
