"""HTTP plumbing of the OpenAI-compatible backend: retries with backoff, and SSE streams.

Kept apart from the backend so that the backend reads as the protocol's three methods. httpx is
imported by the caller (lazily) and passed in, so importing this module costs nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from smallfit.errors import SmallfitError

# Answers worth another try: the server is overloaded or restarting, not refusing the request.
_RETRY_STATUS = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more tries after the first, waiting ``backoff_s * 2**i`` before try ``i + 1``."""

    retries: int = 3
    backoff_s: float = 0.5


class StreamClosed(SmallfitError):
    """The server closed an SSE stream without ``data: [DONE]``."""


class RetryCounter:
    """Thread-safe count of retried requests and of retries, kept for ``info()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries = 0
        self.requests_retried = 0

    def add(self, n: int) -> None:
        """Record one request that needed ``n`` retries (nothing when ``n`` is 0)."""
        if n:
            with self._lock:
                self.retries += n
                self.requests_retried += 1


class Transport:
    """One httpx client, its timeouts and retry policy, and one-line errors naming the server."""

    def __init__(self, httpx: Any, base_url: str, headers: dict[str, str], timeout_s: float,
                 policy: RetryPolicy) -> None:
        self.httpx = httpx
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.counter = RetryCounter()
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)))
        self.timeout_s = timeout_s

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    def _with_retries(self, what: str, send: Callable[[], Any]) -> tuple[Any, int, float]:
        """Run ``send`` until it gives an answer that is not a 5xx, or the retries run out.

        Returns the answer, the retries it took and when the answering attempt started
        (``time.perf_counter``), so that timings exclude failed attempts and backoff.
        """
        httpx = self.httpx
        tries = 0
        while True:
            started = time.perf_counter()
            try:
                response = send()
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                # RemoteProtocolError before any answer: a kept-alive connection the server had closed
                if tries >= self.policy.retries:
                    self.counter.add(tries)
                    raise SmallfitError(
                        f"cannot reach the server at {self.base_url} ({type(exc).__name__} after {tries + 1} tries); "
                        "start the server or check the URL") from None
            except httpx.TimeoutException:
                self.counter.add(tries)
                raise SmallfitError(f"{what}: no answer from {self.base_url} within {self.timeout_s:g} s; "
                                    "raise options.timeout_s or check the server") from None
            except httpx.HTTPError as exc:
                self.counter.add(tries)
                raise SmallfitError(f"{what}: the connection to {self.base_url} failed ({type(exc).__name__}: "
                                    f"{exc}); check the server") from None
            else:
                if response.status_code not in _RETRY_STATUS or tries >= self.policy.retries:
                    self.counter.add(tries)
                    return response, tries, started
                response.close()
            time.sleep(self.policy.backoff_s * 2**tries)
            tries += 1

    def post_json(self, path: str, body: dict[str, Any], what: str) -> tuple[dict[str, Any], int]:
        """POST ``body`` and return the JSON object answered, and the retries it took."""
        response, tries, _ = self._with_retries(what, lambda: self.client.post(self.url(path), json=body))
        return _json_of(response, what, self.url(path)), tries

    def get_json(self, path: str, what: str) -> tuple[dict[str, Any], int]:
        """GET ``path`` and return the JSON object answered, and the retries it took."""
        response, tries, _ = self._with_retries(what, lambda: self.client.get(self.url(path)))
        return _json_of(response, what, self.url(path)), tries

    def url(self, path: str) -> str:
        """``path`` under the base URL; a path starting with ``/`` is taken from the server root."""
        if path.startswith("/"):
            return root_of(self.base_url) + path
        return f"{self.base_url}/{path}"

    def stream(self, path: str, body: dict[str, Any], what: str) -> tuple[Any, int, float]:
        """Open a streaming POST; the caller reads it with :func:`sse_events`, which closes it.
        Returns the response, the retries it took and when the answering attempt started."""
        url = self.url(path)

        def send() -> Any:
            request = self.client.build_request("POST", url, json=body)
            return self.client.send(request, stream=True)

        response, tries, started = self._with_retries(what, send)
        if response.status_code >= 400:
            response.read()
            response.close()
            raise SmallfitError(f"{what}: {url} answered HTTP {response.status_code}: {_snippet(response.text)}")
        ctype = response.headers.get("content-type", "")
        if "text/event-stream" not in ctype:
            response.read()
            response.close()
            raise SmallfitError(f"{what}: {url} answered {ctype or 'no content type'} instead of a server-sent "
                                f"event stream ({_snippet(response.text)}); is this an OpenAI-compatible server?")
        return response, tries, started


def root_of(base_url: str) -> str:
    """The server root of an OpenAI base URL: ``http://h:8080/v1`` -> ``http://h:8080``."""
    base = base_url.rstrip("/")
    return base.removesuffix("/v1")


def _snippet(text: str, n: int = 120) -> str:
    one = " ".join(text.split())
    return repr(one[:n] + ("..." if len(one) > n else ""))


def _json_of(response: Any, what: str, url: str) -> dict[str, Any]:
    if response.status_code >= 400:
        raise SmallfitError(f"{what}: {url} answered HTTP {response.status_code}: {_snippet(response.text)}")
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SmallfitError(f"{what}: {url} answered something that is not JSON ({_snippet(response.text)}); "
                            "is this an OpenAI-compatible server?") from None
    if not isinstance(data, dict):
        raise SmallfitError(f"{what}: {url} answered JSON that is not an object ({_snippet(response.text)})")
    return data


def sse_events(response: Any, what: str) -> Iterator[dict[str, Any]]:
    """The JSON payloads of an SSE stream, up to ``data: [DONE]``.

    A line that is neither an SSE field nor JSON, or a stream that ends without ``[DONE]``,
    raises :class:`SmallfitError`: a dropped stream must not pass for a short answer.
    """
    broke: Exception | None = None
    try:
        for line in response.iter_lines():
            if not line or line.startswith(":"):
                continue  # event separator or comment (keep-alive)
            field, _, value = line.partition(":")
            if field in ("event", "id", "retry"):
                continue
            if field != "data":
                raise SmallfitError(f"{what}: the server sent a line that is not a server-sent event: {_snippet(line)}")
            value = value.strip()
            if value == "[DONE]":
                return
            try:
                payload = json.loads(value)
            except json.JSONDecodeError:
                raise SmallfitError(f"{what}: the server sent an event that is not JSON: {_snippet(value)}") from None
            if not isinstance(payload, dict):
                raise SmallfitError(f"{what}: the server sent an event that is not a JSON object: {_snippet(value)}")
            if "error" in payload:
                detail = _snippet(str(payload["error"]))
                raise SmallfitError(f"{what}: the server reported an error mid-stream: {detail}")
            yield payload
    except SmallfitError:
        raise
    except Exception as exc:  # noqa: BLE001 - httpx's read and protocol errors: the stream broke
        broke = exc
    finally:
        response.close()
    reason = f" ({type(broke).__name__})" if broke is not None else ""
    raise StreamClosed(f"{what}: the server closed the stream before it finished{reason}; check the server's log "
                       "(a prompt longer than its context?)")
