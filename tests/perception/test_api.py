"""ApiLoader against a local HTTP server (a child process on 127.0.0.1)."""

from __future__ import annotations

import re
import threading
import time
import uuid

import numpy as np
import pytest
import torch

from mmfuse.perception import ApiLoader, DecodeError, SourceError, SourceTimeoutError, clock
from perception._support import Servers

pytest.importorskip("httpx")


def test_json_one_shot(servers: Servers, no_leaks: None) -> None:
    before = clock()
    with ApiLoader(servers.url("/json")) as api:
        samples = list(api)
    assert len(samples) == 1
    value, t, meta = samples[0]
    assert value == {"value": 42, "items": [1, 2, 3]}
    assert before <= meta["request_time"] <= t <= clock()
    assert meta["status"] == 200 and meta["attempts"] == 1
    assert meta["latency"] == pytest.approx(t - meta["request_time"])
    assert meta["headers"]["content-type"] == "application/json"
    assert api.closed


def test_text_uses_the_declared_charset(servers: Servers) -> None:
    with ApiLoader(servers.url("/text"), parse="text") as api:
        assert next(api).data == "héllo wörld"


def test_image_to_rgb_tensor(servers: Servers) -> None:
    pytest.importorskip("cv2")
    with ApiLoader(servers.url("/image.png"), parse="image") as api:
        image = next(api).data
    assert image.shape == (3, 8, 12) and image.dtype == torch.uint8
    want = np.zeros((3, 8, 12), np.uint8)
    want[0, :, :4] = want[1, :, 4:8] = want[2, :, 8:] = 255
    np.testing.assert_array_equal(image.numpy(), want)


def test_bytes_callable_and_post(servers: Servers) -> None:
    with ApiLoader(servers.url("/json"), parse="bytes") as api:
        assert next(api).data == b'{"value": 42, "items": [1, 2, 3]}'
    with ApiLoader(servers.url("/json"), parse=lambda body: len(body)) as api:
        assert next(api).data == 33
    with ApiLoader(servers.url("/echo"), method="post", body="ping") as api:
        assert next(api).data == {"echo": "ping"}


def test_polling_on_a_fixed_schedule(servers: Servers, no_leaks: None) -> None:
    with ApiLoader(servers.url("/counter"), interval=0.1) as api:
        samples = [next(api) for _ in range(4)]
    counts = [s.data["n"] for s in samples]
    assert counts == list(range(counts[0], counts[0] + 4))
    starts = [s.meta["request_time"] for s in samples]
    gaps = np.diff(starts)
    assert np.all(gaps > 0.08) and np.all(gaps < 1.0)  # on schedule, slack for a busy machine


def test_close_from_another_thread_stops_a_waiting_poll(servers: Servers, no_leaks: None) -> None:
    api = ApiLoader(servers.url("/counter"), interval=30.0)
    next(api)
    threading.Timer(0.2, api.close).start()
    t0 = time.monotonic()
    with pytest.raises(StopIteration):
        next(api)
    assert time.monotonic() - t0 < 2.0


def test_500_then_success_is_retried(servers: Servers, no_leaks: None) -> None:
    key = uuid.uuid4().hex
    t0 = time.monotonic()
    with ApiLoader(servers.url(f"/flaky?key={key}&fail=2"), retries=2, backoff=0.05) as api:
        value, _, meta = next(api)
    assert value == {"ok": True, "attempt": 3}
    assert meta["attempts"] == 3
    assert time.monotonic() - t0 >= 0.05 + 0.1  # backoff 0.05, then 0.1


def test_500_beyond_the_retries_is_a_clear_error(servers: Servers) -> None:
    key = uuid.uuid4().hex
    url = servers.url(f"/flaky?key={key}&fail=5")
    with pytest.raises(SourceError, match=r"GET .*flaky.* failed after 2 attempt\(s\): HTTP 500"):
        next(ApiLoader(url, retries=1, backoff=0.0))


def test_4xx_is_not_retried(servers: Servers) -> None:
    with pytest.raises(SourceError, match="answered HTTP 404"):
        next(ApiLoader(servers.url("/status?code=404"), retries=5, backoff=10.0))


def test_oversized_chunked_body_is_cut_while_streaming(servers: Servers, no_leaks: None) -> None:
    t0 = time.monotonic()
    api = ApiLoader(servers.url("/big?n=500000000"), parse="bytes", max_bytes=200_000)
    with pytest.raises(SourceError, match="exceeded max_bytes=200000 while reading"):
        next(api)
    assert api.closed
    assert time.monotonic() - t0 < 5.0  # far less than reading 500 MB


def test_oversized_content_length_fails_before_reading(servers: Servers) -> None:
    with pytest.raises(SourceError, match="is 300000 bytes, over max_bytes=1000"):
        next(ApiLoader(servers.url("/big-cl?n=300000"), max_bytes=1000))
    with ApiLoader(servers.url("/big-cl?n=1000"), parse="bytes", max_bytes=1000) as api:
        assert len(next(api).data) == 1000  # exactly the cap is accepted


def test_invalid_json(servers: Servers) -> None:
    with pytest.raises(DecodeError, match=r"invalid JSON from .*invalid-json"):
        next(ApiLoader(servers.url("/invalid-json")))


def test_image_that_is_not_an_image(servers: Servers) -> None:
    pytest.importorskip("cv2")
    with pytest.raises(DecodeError, match="not a decodable image"):
        next(ApiLoader(servers.url("/json"), parse="image"))


def test_dead_server_after_retries(dead_port: int, no_leaks: None) -> None:
    url = f"http://127.0.0.1:{dead_port}/json"
    with pytest.raises(SourceError, match=r"failed after 3 attempt\(s\): ConnectError"):
        next(ApiLoader(url, retries=2, backoff=0.01, timeout=2.0))


def test_server_that_accepts_and_never_answers(servers: Servers, no_leaks: None) -> None:
    url = f"http://127.0.0.1:{servers.silent}/json"
    t0 = time.monotonic()
    with pytest.raises(SourceTimeoutError, match=r"failed after 2 attempt\(s\): timed out after 0.3s"):
        next(ApiLoader(url, timeout=0.3, retries=1, backoff=0.05))
    assert time.monotonic() - t0 < 0.3 * 2 + 0.05 + 3.0


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x", "127.0.0.1:80/x"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(ValueError, match="only http and https URLs are supported"):
        ApiLoader(url)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown `parse` 'xml'; expected one of"):
        ApiLoader("http://127.0.0.1/x", parse="xml")
    with pytest.raises(ValueError, match="`interval` to be a positive"):
        ApiLoader("http://127.0.0.1/x", interval=0)
    with pytest.raises(ValueError, match="`retries` to be a non-negative"):
        ApiLoader("http://127.0.0.1/x", retries=-1)
    with pytest.raises(ValueError, match="has no host"):
        ApiLoader("http:///x")


def test_tls_verification_is_on_by_default() -> None:
    api = ApiLoader("https://127.0.0.1/x")
    try:
        ssl_context = api._client._transport._pool._ssl_context
        import ssl

        assert ssl_context.verify_mode == ssl.CERT_REQUIRED and ssl_context.check_hostname
    finally:
        api.close()


# -- one deadline per attempt, close from another thread ---------------------------------------
def test_trickling_headers_fail_within_the_deadline(servers: Servers, no_leaks: None,
                                                    no_fd_leaks: None) -> None:
    # the server sends its status and header lines one byte every 0.2 s: every read succeeds,
    # only the whole-attempt deadline stops the request
    url = f"http://127.0.0.1:{servers.trickle}/json"
    api = ApiLoader(url, timeout=1.0, retries=0)
    t0 = time.monotonic()
    with pytest.raises(SourceTimeoutError,
                       match=r"^ApiLoader: GET .* failed after 1 attempt\(s\): timed out after 1.0s"):
        next(api)
    assert time.monotonic() - t0 < 1.0 + 0.5
    assert api.closed


def test_trickling_headers_with_retries(servers: Servers, no_fd_leaks: None) -> None:
    url = f"http://127.0.0.1:{servers.trickle}/json"
    t0 = time.monotonic()
    with pytest.raises(SourceTimeoutError, match=r"failed after 2 attempt\(s\): timed out"):
        next(ApiLoader(url, timeout=0.5, retries=1, backoff=0.0))
    assert time.monotonic() - t0 < 2 * 0.5 + 0.5


@pytest.mark.parametrize("which", ["trickle", "silent"])
def test_close_from_another_thread_aborts_a_request_in_flight(servers: Servers, which: str,
                                                              no_leaks: None,
                                                              no_fd_leaks: None) -> None:
    port = servers.trickle if which == "trickle" else servers.silent
    api = ApiLoader(f"http://127.0.0.1:{port}/json", timeout=30.0, retries=3)
    timer = threading.Timer(0.5, api.close)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"^ApiLoader: closed while GET http://127\.0\.0\.1:\d+/json "
                                          r"was in flight\.$"):
        next(api)
    assert time.monotonic() - t0 < 0.5 + 1.0  # not the 30 s timeout, and no retry
    timer.join()
    assert api.closed
    with pytest.raises(StopIteration):
        next(api)


# -- redirects ----------------------------------------------------------------------------------
def test_redirects_are_refused_by_default(servers: Servers, no_fd_leaks: None) -> None:
    t0 = time.monotonic()
    url = servers.url("/redirect?to=/json")
    with pytest.raises(SourceError, match=r"^ApiLoader: GET .*/redirect\?to=/json answered HTTP 302 "
                                          r"Found, a redirect to '/json'; redirects are off \(pass "
                                          r"follow_redirects=True .*\)\.$"):
        next(ApiLoader(url, retries=5, backoff=10.0))
    assert time.monotonic() - t0 < 5.0  # at once, not retried


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_same_origin_redirects_are_followed_when_asked(servers: Servers, code: int) -> None:
    with ApiLoader(servers.url(f"/redirect?to=/json&code={code}"), follow_redirects=True) as api:
        value, _, meta = next(api)
    assert value == {"value": 42, "items": [1, 2, 3]}
    assert meta["url"] == servers.url("/json") and meta["attempts"] == 1


def _targets(servers: Servers) -> list[str]:
    return [
        f"http://127.0.0.1:{servers.silent}/json",  # another port
        f"http://localhost:{servers.http}/json",  # another host name
        f"https://127.0.0.1:{servers.http}/json",  # another scheme
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
    ]


@pytest.mark.parametrize("k", range(5), ids=["port", "host", "https", "file", "ftp"])
def test_redirects_off_the_origin_fail_at_once(servers: Servers, k: int, no_fd_leaks: None) -> None:
    target = _targets(servers)[k]
    url = servers.url(f"/redirect?to={target}")
    t0 = time.monotonic()
    with pytest.raises(SourceError) as info:
        next(ApiLoader(url, follow_redirects=True, retries=5, backoff=10.0))
    message = str(info.value)
    assert re.fullmatch(rf"ApiLoader: GET .* answered HTTP 302 Found, a redirect to "
                        rf"'{re.escape(target)}', which leaves the origin http://127\.0\.0\.1:"
                        rf"{servers.http}; only same-origin redirects are followed\.", message)
    assert time.monotonic() - t0 < 5.0


def test_a_redirect_loop_is_too_many_redirects(servers: Servers, no_fd_leaks: None) -> None:
    with pytest.raises(SourceError, match=r"^ApiLoader: GET .*/loop gave too many redirects "
                                          r"\(more than 10\)\.$"):
        next(ApiLoader(servers.url("/loop"), follow_redirects=True, retries=5, backoff=10.0))


# -- errors that fail at once, naming the loader --------------------------------------------------
@pytest.mark.parametrize(("url", "why"), [
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://127.0.0.1:99999/x", "Port out of range 0-65535"),
    ("http://127.0.0.1:port/x", "Port could not be cast to integer value as 'port'"),
])
def test_invalid_urls_fail_in_the_constructor(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=rf"^ApiLoader: invalid URL {re.escape(repr(url))}: "
                                         rf"{re.escape(why)}\.$"):
        ApiLoader(url)


def test_4xx_message_is_one_sentence(servers: Servers) -> None:
    with pytest.raises(SourceError) as info:
        next(ApiLoader(servers.url("/status?code=403"), retries=3, backoff=10.0))
    assert re.fullmatch(r"ApiLoader: GET \S+ answered HTTP 403 Forbidden\.", str(info.value))


def test_failure_messages_end_in_one_period(dead_port: int) -> None:
    with pytest.raises(SourceError) as info:
        next(ApiLoader(f"http://127.0.0.1:{dead_port}/json", retries=0))
    assert str(info.value).endswith(".") and not str(info.value).endswith("..")


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"timeout": float("inf")}, ValueError, "`timeout` to be a positive finite number, got inf"),
    ({"timeout": float("nan")}, ValueError, "`timeout` to be a positive finite number, got nan"),
    ({"retries": 1.5}, TypeError, "`retries` to be an int, got 1.5"),
    ({"retries": True}, TypeError, "`retries` to be an int, got True"),
    ({"max_bytes": 0}, ValueError, "`max_bytes` to be a positive int, got 0"),
    ({"method": 3}, TypeError, "`method` to be a non-empty str, got 3"),
    ({"body": 3}, TypeError, "`body` to be bytes, str or None, got int"),
])
def test_bad_argument_types(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=rf"^ApiLoader: expected {re.escape(match)}\.$"):
        ApiLoader("http://127.0.0.1/x", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"headers": 3}, TypeError, "expected `headers` to map str to str, got 3"),
    ({"headers": {"a": 1}}, TypeError, "expected `headers` to map str to str, got {'a': 1}"),
    ({"method": "GE T"}, ValueError, "expected `method` to be an HTTP method name, got 'GE T'"),
    ({"verify": "nope"}, TypeError, "expected `verify` to be a bool or an ssl.SSLContext, got 'nope'"),
])
def test_bad_headers_method_and_verify(kwargs: dict[str, object], error: type[Exception],
                                       match: str) -> None:
    with pytest.raises(error, match=rf"^ApiLoader: {re.escape(match)}\.$"):
        ApiLoader("http://127.0.0.1/x", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["http:// /x", "http://exa mple.com/x", "http://127.0.0.1/a b"])
def test_urls_with_whitespace_are_invalid(url: str) -> None:
    with pytest.raises(ValueError, match=rf"^ApiLoader: invalid URL {re.escape(repr(url))}: it "
                                         rf"contains whitespace\.$"):
        ApiLoader(url)
