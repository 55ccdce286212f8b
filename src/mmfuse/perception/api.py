"""HTTP APIs through httpx: one-shot or polling, with timeouts, retries and a size cap."""

from __future__ import annotations

import json
import math
import re
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

import numpy as np
import torch

from .._checks import check_choice, check_positive
from .._optional import require
from .sample import (
    DecodeError,
    Loader,
    Sample,
    SourceError,
    SourceTimeoutError,
    _check_count,
    clock,
)

__all__ = ["ApiLoader"]

_PARSERS = ("json", "text", "image", "bytes")


class ApiLoader(Loader):
    """Responses of an HTTP(S) endpoint as samples: once, or polled every ``interval`` seconds.

    Each request is retried on connection errors, timeouts and 5xx answers (httpx's own
    transport retries cover only failed connections), waiting ``backoff * 2**k`` seconds before
    retry k+1. A 4xx answer, a refused redirect, an unsupported protocol or an invalid URL fails
    at once. ``timeout`` bounds each attempt as a whole (connecting, sending, the status and
    header lines, redirects and the body), so a server that trickles its answer cannot hold the
    loader longer than that. The body is read in chunks and the request abandoned as soon as it
    exceeds ``max_bytes`` (a ``Content-Length`` above the cap fails before reading). Only
    ``http`` and ``https`` URLs are accepted; TLS certificates are verified unless
    ``verify=False``.

    Redirects are refused by default (a user-given URL must not bounce the loader elsewhere);
    with ``follow_redirects=True`` up to 10 redirects are followed when they stay on the
    request's origin (same scheme, host and port), and any other target fails at once.

    :meth:`close` may be called from another thread: a poll or backoff wait ends the iteration,
    and a request in flight is aborted with a :class:`SourceError` saying the loader was closed.

    Args:
        url: ``http://`` or ``https://`` URL.
        method: HTTP method.
        parse: ``"json"`` (Python value), ``"text"`` (str), ``"image"`` ((C, H, W) uint8 RGB
            tensor, via OpenCV), ``"bytes"``, or a callable ``bytes -> Any``.
        interval: Seconds between polls (on a fixed schedule, missed slots skipped); None
            fetches once and stops.
        timeout: Seconds one attempt may take in all (connect, headers, redirects, body).
        retries: Extra attempts after a failed one.
        backoff: Base delay of the exponential backoff, seconds.
        max_bytes: Largest body accepted.
        headers: Extra request headers.
        body: Request body (bytes or str), e.g. for POST.
        verify: Verify TLS certificates (keep True outside tests), or an ``ssl.SSLContext``.
        follow_redirects: Follow same-origin redirects (off by default).

    Meta keys: ``status``, ``headers``, ``attempts``, ``request_time`` (clock time the
    successful attempt started), ``latency`` (seconds to the full body), ``url`` (the URL that
    answered, after redirects). The timestamp is the clock time the body was complete.

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
        follow_redirects: bool = False,
    ) -> None:
        super().__init__(url if isinstance(url, str) else repr(url))
        self._client: Any = None
        if not isinstance(url, str):
            raise TypeError(f"ApiLoader: expected `url` to be a str, got {type(url).__name__}.")
        _check_url(url)
        if not isinstance(method, str) or not method.strip():
            raise TypeError(f"ApiLoader: expected `method` to be a non-empty str, got {method!r}.")
        if not _TOKEN.fullmatch(method.strip()):
            raise ValueError(f"ApiLoader: expected `method` to be an HTTP method name, got {method!r}.")
        if headers is not None and not (
            isinstance(headers, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise TypeError(f"ApiLoader: expected `headers` to map str to str, got {headers!r}.")
        if not isinstance(verify, (bool, ssl.SSLContext)):
            raise TypeError(
                f"ApiLoader: expected `verify` to be a bool or an ssl.SSLContext, got {verify!r}."
            )
        if not callable(parse):
            check_choice(parse, _PARSERS, owner=self, arg="parse")
        if interval is not None:
            _check_finite_positive(interval, "interval")
        _check_finite_positive(timeout, "timeout")
        _check_count(retries, owner="ApiLoader", arg="retries", allow_zero=True)
        check_positive(backoff, owner=self, arg="backoff", allow_zero=True)
        if not math.isfinite(backoff):
            raise ValueError(f"ApiLoader: expected `backoff` to be a finite number, got {backoff!r}.")
        _check_count(max_bytes, owner="ApiLoader", arg="max_bytes")
        if body is not None and not isinstance(body, (bytes, str)):
            raise TypeError(f"ApiLoader: expected `body` to be bytes, str or None, got {type(body).__name__}.")
        self.url = url
        self.method = method.strip().upper()
        self.parse = parse
        self.interval = None if interval is None else float(interval)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_bytes = int(max_bytes)
        self.body = body
        self.follow_redirects = bool(follow_redirects)
        self._stop = threading.Event()
        self._due: float | None = None
        self._done = False
        self._httpx = require("httpx", feature="mmfuse.perception.ApiLoader")
        try:
            self._httpx.URL(url)
        except self._httpx.InvalidURL as exc:
            raise ValueError(f"ApiLoader: invalid URL {url!r}: {_clean(str(exc))}.") from None
        self._deadline = _Deadline(require("httpcore", feature="mmfuse.perception.ApiLoader"))
        self._client = self._httpx.Client(
            timeout=self._httpx.Timeout(self.timeout), headers=dict(headers or {}), verify=verify,
            follow_redirects=False,
        )
        self._closed = False  # from here on close() releases the client
        _install_deadline(self._client, self._deadline)

    # -- one request with retries -------------------------------------------------------------
    def _fail(self, what: str) -> SourceError:
        return SourceError(f"ApiLoader: {self.method} {self.url} {_clean(what)}.")

    def _attempt(self) -> tuple[int, dict[str, str], bytes, str]:
        """One attempt, redirects included, within one deadline."""
        url, method, body = self.url, self.method, self.body
        self._deadline.start(self.timeout)
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                with self._client.stream(method, url, content=body) as r:
                    if r.is_redirect:
                        target = self._redirect(url, r)
                        if r.status_code == 303 or (r.status_code in (301, 302) and method == "POST"):
                            method, body = "GET", None  # as browsers and httpx do
                        url = target
                        continue
                    return (*self._receive(r), url)
            raise self._fail(f"gave too many redirects (more than {_MAX_REDIRECTS})")
        finally:
            self._deadline.stop()

    def _redirect(self, url: str, r: Any) -> str:
        location = r.headers["location"]
        what = f"answered HTTP {r.status_code} {r.reason_phrase}, a redirect to {location!r}"
        if not self.follow_redirects:
            raise self._fail(f"{what}; redirects are off (pass follow_redirects=True to follow "
                             f"redirects on the same origin)")
        try:
            target = urljoin(url, location)
            here, there = urlsplit(url), urlsplit(target)
            same = (here.scheme.lower(), here.hostname, _port(here)) == (
                there.scheme.lower(), there.hostname, _port(there))
        except ValueError as exc:
            raise self._fail(f"{what}, an invalid URL ({exc})") from None
        if not same:
            raise self._fail(f"{what}, which leaves the origin {_origin(here)}; only same-origin "
                             f"redirects are followed")
        return target

    def _receive(self, r: Any) -> tuple[int, dict[str, str], bytes]:
        if r.status_code >= 500:
            raise _Retryable(f"HTTP {r.status_code} {r.reason_phrase}")
        if r.status_code >= 400:
            raise self._fail(f"answered HTTP {r.status_code} {r.reason_phrase}")
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
            chunks.append(chunk)
        return r.status_code, dict(r.headers), b"".join(chunks)

    def _fetch(self) -> tuple[int, dict[str, str], bytes, int, float, str]:
        httpx = self._httpx
        last = ""
        timed_out = False
        for attempt in range(self.retries + 1):
            if attempt and self._stop.wait(self.backoff * 2 ** (attempt - 1)):
                raise StopIteration
            started = clock()
            try:
                status, headers, body, url = self._attempt()
                return status, headers, body, attempt + 1, started, url
            except Exception as exc:
                if self._stop.is_set():  # close() from another thread aborted the request
                    raise SourceError(
                        f"ApiLoader: closed while {self.method} {self.url} was in flight."
                    ) from exc
                if isinstance(exc, SourceError):
                    raise
                if isinstance(exc, _Retryable):
                    last, timed_out = str(exc), False
                elif isinstance(exc, httpx.TimeoutException):
                    last, timed_out = f"timed out after {self.timeout}s ({type(exc).__name__})", True
                elif isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
                    raise self._fail(f"failed: {type(exc).__name__}: {exc}") from exc
                elif isinstance(exc, httpx.DecodingError):
                    raise DecodeError(
                        f"ApiLoader: cannot decode the body of {self.url}: {_clean(str(exc))}."
                    ) from exc
                elif isinstance(exc, httpx.TransportError):
                    last, timed_out = f"{type(exc).__name__}: {exc}", False
                else:
                    raise
        error = SourceTimeoutError if timed_out else SourceError
        raise error(
            f"ApiLoader: {self.method} {self.url} failed after {self.retries + 1} attempt(s): "
            f"{_clean(last)}."
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
        status, headers, body, attempts, started, url = self._fetch()
        t = clock()
        value = self._decode(body, headers)
        meta = self._meta(status=status, headers=headers, attempts=attempts, request_time=started,
                          latency=t - started, url=url)
        return Sample(value, t, meta)

    def close(self) -> None:
        if hasattr(self, "_stop"):
            self._stop.set()  # interrupts a poll or backoff wait in another thread
        if getattr(self, "_deadline", None) is not None:
            self._deadline.abort()  # wakes a request blocked on its socket in another thread
        super().close()

    def _release(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


class _Retryable(Exception):
    """A 5xx answer: try again."""


_MAX_REDIRECTS = 10
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP method (RFC 9110 token)


def _clean(text: str) -> str:
    """One line without trailing periods (the caller ends the sentence)."""
    return " ".join(text.split()).rstrip(".")


def _port(parts: SplitResult) -> int | None:
    return parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())


def _origin(parts: SplitResult) -> str:
    return f"{parts.scheme.lower()}://{parts.hostname}:{_port(parts)}"


def _check_url(url: str) -> None:
    if any(c.isspace() for c in url):
        raise ValueError(f"ApiLoader: invalid URL {url!r}: it contains whitespace.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"ApiLoader: invalid URL {url!r}: {_clean(str(exc))}.") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(
            f"ApiLoader: only http and https URLs are supported, got scheme "
            f"{parts.scheme or '(none)'!r} in {url!r}."
        )
    if not host:
        raise ValueError(f"ApiLoader: URL {url!r} has no host.")


def _check_finite_positive(value: Any, arg: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0 < value < math.inf):
        raise ValueError(f"ApiLoader: expected `{arg}` to be a positive finite number, got {value!r}.")


class _Deadline:
    """A network backend for httpcore that bounds every socket operation of an attempt by one
    deadline, and can abort the sockets in use from another thread.

    httpx's timeouts apply to each connect, read and write separately, so a server sending one
    byte at a time never trips them; here each operation gets ``min(its timeout, time left)``
    and fails once the attempt's time is spent.
    """

    def __init__(self, httpcore: Any) -> None:
        self.httpcore = httpcore
        self.inner: Any = httpcore.SyncBackend()
        self.deadline: float | None = None
        self.streams: set[_DeadlineStream] = set()
        self.lock = threading.Lock()
        self.aborted = False

    def start(self, seconds: float) -> None:
        self.deadline = clock() + seconds

    def stop(self) -> None:
        self.deadline = None

    def left(self, timeout: float | None, error: type[Exception]) -> float | None:
        if self.aborted:
            raise self.httpcore.ReadError("aborted by close()")
        if self.deadline is None:
            return timeout
        left = self.deadline - clock()
        if left <= 0:
            raise error("the attempt's deadline passed")
        return left if timeout is None else min(timeout, left)

    def wrap(self, stream: Any) -> _DeadlineStream:
        wrapped = _DeadlineStream(stream, self)
        with self.lock:
            self.streams.add(wrapped)
        if self.aborted:
            wrapped.shutdown()
        return wrapped

    def abort(self) -> None:
        """Shut down every open socket: a thread blocked reading one wakes up at once."""
        self.aborted = True
        with self.lock:
            streams = list(self.streams)
        for stream in streams:
            stream.shutdown()

    # the NetworkBackend interface
    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None) -> Any:
        left = self.left(timeout, self.httpcore.ConnectTimeout)
        return self.wrap(self.inner.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> Any:  # pragma: no cover - uds unused
        left = self.left(timeout, self.httpcore.ConnectTimeout)
        return self.wrap(self.inner.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:  # pragma: no cover - used by httpcore retries only
        self.inner.sleep(seconds)


class _DeadlineStream:
    """A network stream whose reads and writes stop at the attempt's deadline."""

    def __init__(self, inner: Any, owner: _Deadline) -> None:
        self.inner = inner
        self.owner = owner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = self.inner.read(max_bytes, self.owner.left(timeout, self.owner.httpcore.ReadTimeout))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.owner.left(timeout, self.owner.httpcore.WriteTimeout))

    def close(self) -> None:
        with self.owner.lock:
            self.owner.streams.discard(self)
        self.inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> Any:
        left = self.owner.left(timeout, self.owner.httpcore.ConnectTimeout)
        with self.owner.lock:
            self.owner.streams.discard(self)
        return self.owner.wrap(self.inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)

    def shutdown(self) -> None:
        sock = self.inner.get_extra_info("socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _install_deadline(client: Any, backend: _Deadline) -> None:
    """Route every connection pool of ``client`` (its transport and any proxy mounts) through
    ``backend``."""
    transports = [client._transport, *client._mounts.values()]
    pools = [getattr(t, "_pool", None) for t in transports if t is not None]
    found = False
    for pool in pools:
        if pool is not None and hasattr(pool, "_network_backend"):
            pool._network_backend = backend
            found = True
    if not found:  # pragma: no cover - an httpx release that moved its internals
        raise RuntimeError("ApiLoader: cannot install its deadline in this httpx version.")
