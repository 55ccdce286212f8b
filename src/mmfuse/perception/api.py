"""HTTP APIs through httpx: one-shot or polling, with timeouts, retries and a size cap."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from .._checks import check_choice, check_positive
from .._optional import require
from .sample import DecodeError, Loader, Sample, SourceError, SourceTimeoutError, clock

__all__ = ["ApiLoader"]

_PARSERS = ("json", "text", "image", "bytes")


class ApiLoader(Loader):
    """Responses of an HTTP(S) endpoint as samples: once, or polled every ``interval`` seconds.

    Each request is retried on connection errors, timeouts and 5xx answers (httpx's own
    transport retries cover only failed connections), waiting ``backoff * 2**k`` seconds before
    retry k+1; a 4xx answer fails at once. The body is read in chunks and the request abandoned
    as soon as it exceeds ``max_bytes`` (a ``Content-Length`` above the cap fails before reading).
    Only ``http`` and ``https`` URLs are accepted; TLS certificates are verified unless
    ``verify=False``.

    Args:
        url: ``http://`` or ``https://`` URL.
        method: HTTP method.
        parse: ``"json"`` (Python value), ``"text"`` (str), ``"image"`` ((C, H, W) uint8 RGB
            tensor, via OpenCV), ``"bytes"``, or a callable ``bytes -> Any``.
        interval: Seconds between polls (on a fixed schedule, missed slots skipped); None
            fetches once and stops.
        timeout: Seconds for connecting, and for each read, and for the whole body of one attempt.
        retries: Extra attempts after a failed one.
        backoff: Base delay of the exponential backoff, seconds.
        max_bytes: Largest body accepted.
        headers: Extra request headers.
        body: Request body (bytes or str), e.g. for POST.
        verify: Verify TLS certificates (keep True outside tests).

    Meta keys: ``status``, ``headers``, ``attempts``, ``request_time`` (clock time the
    successful attempt started), ``latency`` (seconds to the full body). The timestamp is the
    clock time the body was complete.

    Example:
        >>> with ApiLoader("https://example.org/sensor.json", interval=1.0) as api:  # doctest: +SKIP
        ...     for value, t, meta in api:
        ...         print(t, value)
    """

    kind = "values"

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        parse: str | Callable[[bytes], Any] = "json",
        interval: float | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.5,
        max_bytes: int = 10 * 2**20,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        verify: bool = True,
    ) -> None:
        super().__init__(url if isinstance(url, str) else repr(url))
        self._client: Any = None
        if not isinstance(url, str):
            raise TypeError(f"ApiLoader: expected `url` to be a str, got {type(url).__name__}.")
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError(
                f"ApiLoader: only http and https URLs are supported, got scheme "
                f"{parts.scheme or '(none)'!r} in {url!r}."
            )
        if not parts.hostname:
            raise ValueError(f"ApiLoader: URL {url!r} has no host.")
        if not callable(parse):
            check_choice(parse, _PARSERS, owner=self, arg="parse")
        if interval is not None:
            check_positive(interval, owner=self, arg="interval")
        check_positive(timeout, owner=self, arg="timeout")
        check_positive(retries, owner=self, arg="retries", allow_zero=True)
        check_positive(backoff, owner=self, arg="backoff", allow_zero=True)
        check_positive(max_bytes, owner=self, arg="max_bytes")
        self.url = url
        self.method = method.upper()
        self.parse = parse
        self.interval = interval
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_bytes = int(max_bytes)
        self.body = body
        self._stop = threading.Event()
        self._due: float | None = None
        self._done = False
        self._httpx = require("httpx", feature="mmfuse.perception.ApiLoader")
        self._client = self._httpx.Client(
            timeout=self._httpx.Timeout(self.timeout), headers=dict(headers or {}), verify=verify,
            follow_redirects=True,
        )
        self._closed = False

    # -- one request with retries -------------------------------------------------------------
    def _attempt(self) -> tuple[int, dict[str, str], bytes]:
        httpx = self._httpx
        deadline = clock() + self.timeout
        with self._client.stream(self.method, self.url, content=self.body) as r:
            if r.status_code >= 500:
                raise _Retryable(f"HTTP {r.status_code} {r.reason_phrase}")
            if r.status_code >= 400:
                raise SourceError(f"ApiLoader: {self.method} {self.url} answered HTTP {r.status_code} {r.reason_phrase}.")
            length = r.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                raise SourceError(
                    f"ApiLoader: response of {self.url} is {int(length)} bytes, over max_bytes={self.max_bytes}."
                )
            chunks: list[bytes] = []
            size = 0
            for chunk in r.iter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise SourceError(
                        f"ApiLoader: response of {self.url} exceeded max_bytes={self.max_bytes} while reading."
                    )
                if clock() > deadline:
                    raise httpx.ReadTimeout(f"body not complete within {self.timeout}s")
                chunks.append(chunk)
            return r.status_code, dict(r.headers), b"".join(chunks)

    def _fetch(self) -> tuple[int, dict[str, str], bytes, int, float]:
        httpx = self._httpx
        last = ""
        timed_out = False
        for attempt in range(self.retries + 1):
            if attempt and self._stop.wait(self.backoff * 2 ** (attempt - 1)):
                raise StopIteration
            started = clock()
            try:
                status, headers, body = self._attempt()
                return status, headers, body, attempt + 1, started
            except _Retryable as exc:
                last, timed_out = str(exc), False
            except httpx.TimeoutException as exc:
                last, timed_out = f"timed out after {self.timeout}s ({type(exc).__name__})", True
            except httpx.TransportError as exc:
                last, timed_out = f"{type(exc).__name__}: {exc}", False
        error = SourceTimeoutError if timed_out else SourceError
        raise error(
            f"ApiLoader: {self.method} {self.url} failed after {self.retries + 1} attempt(s): {last}."
        )

    def _decode(self, body: bytes, headers: Mapping[str, str]) -> Any:
        parse = self.parse
        if callable(parse):
            return parse(body)
        if parse == "bytes":
            return body
        if parse == "json":
            try:
                return json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DecodeError(f"ApiLoader: invalid JSON from {self.url}: {exc}.") from exc
        if parse == "text":
            charset = "utf-8"
            for part in headers.get("content-type", "").split(";")[1:]:
                key, _, value = part.strip().partition("=")
                if key.lower() == "charset" and value:
                    charset = value.strip('"')
            try:
                return body.decode(charset)
            except (LookupError, UnicodeDecodeError) as exc:
                raise DecodeError(f"ApiLoader: cannot decode text from {self.url} as {charset}: {exc}.") from exc
        cv2 = require("cv2", feature="mmfuse.perception.ApiLoader(parse='image')")
        image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise DecodeError(f"ApiLoader: body of {self.url} ({len(body)} bytes) is not a decodable image.")
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()  # (C, H, W)

    def _read(self) -> Sample:
        if self._done:
            raise StopIteration
        if self.interval is not None and self._due is not None:
            now = clock()
            while self._due <= now - self.interval:  # skip missed slots
                self._due += self.interval
            if self._stop.wait(max(0.0, self._due - now)):
                raise StopIteration
        elif self.interval is None:
            self._done = True
        if self._due is None:
            self._due = clock()
        if self.interval is not None:
            self._due += self.interval
        status, headers, body, attempts, started = self._fetch()
        t = clock()
        value = self._decode(body, headers)
        meta = self._meta(status=status, headers=headers, attempts=attempts, request_time=started,
                          latency=t - started)
        return Sample(value, t, meta)

    def close(self) -> None:
        if hasattr(self, "_stop"):
            self._stop.set()  # interrupts a poll or backoff wait in another thread
        super().close()

    def _release(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


class _Retryable(Exception):
    """A 5xx answer: try again."""
