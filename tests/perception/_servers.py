"""Local servers for the perception tests, run as a child process on 127.0.0.1.

One HTTP server (an MJPEG camera and the JSON/text/image/error/redirect routes the ApiLoader
tests use), one "silent" TCP server that accepts connections and never answers, and one
"trickle" server that answers with a status line and endless header lines, one byte every
0.2 s. Prints ``HTTP <port>``, ``SILENT <port>`` and ``TRICKLE <port>`` on stdout once all
listen; runs until killed.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

FLAKY: dict[str, int] = {}
COUNTER = [0]
LOCK = threading.Lock()


def frame_jpeg(i: int, width: int = 160, height: int = 120) -> bytes:
    """A frame whose grey level encodes ``i`` (10 * i mod 250) with a bar at column 4*i."""
    img = np.full((height, width, 3), (10 * i) % 250, np.uint8)
    img[:, (4 * i) % width] = 255
    _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return buf.tobytes()


def test_image() -> np.ndarray:
    """The RGB image /image.png serves: red, green and blue thirds (8 x 12)."""
    img = np.zeros((8, 12, 3), np.uint8)
    img[:, :4, 0] = 255
    img[:, 4:8, 1] = 255
    img[:, 8:, 2] = 255
    return img


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(n)
        self._send(200, json.dumps({"echo": data.decode()}).encode())

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/stream.mjpg":
            self.mjpeg(int(q.get("frames", 0)), float(q.get("fps", 20)))
        elif url.path == "/stall.mjpg":
            # answers the request line with headers, then never sends a frame
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            self.wfile.flush()
            time.sleep(3600)
        elif url.path == "/json":
            self._send(200, json.dumps({"value": 42, "items": [1, 2, 3]}).encode())
        elif url.path == "/counter":
            with LOCK:
                COUNTER[0] += 1
                n = COUNTER[0]
            self._send(200, json.dumps({"n": n}).encode())
        elif url.path == "/text":
            self._send(200, "héllo wörld".encode("latin-1"), "text/plain; charset=latin-1")
        elif url.path == "/image.png":
            _, buf = cv2.imencode(".png", cv2.cvtColor(test_image(), cv2.COLOR_RGB2BGR))
            self._send(200, buf.tobytes(), "image/png")
        elif url.path == "/invalid-json":
            self._send(200, b'{"value": 4', "application/json")
        elif url.path == "/flaky":
            with LOCK:
                seen = FLAKY.get(q["key"], 0)
                FLAKY[q["key"]] = seen + 1
            if seen < int(q.get("fail", 2)):
                self._send(500, b"internal error", "text/plain")
            else:
                self._send(200, json.dumps({"ok": True, "attempt": seen + 1}).encode())
        elif url.path == "/status":
            self._send(int(q["code"]), b"status", "text/plain")
        elif url.path == "/big":
            # chunked, no Content-Length: the cap must be enforced while reading
            n, chunk = int(q["n"]), b"x" * 65536
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                sent = 0
                while sent < n:
                    part = chunk[: min(len(chunk), n - sent)]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    sent += len(part)
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif url.path == "/redirect":
            # a redirect to ``to`` (any URL) with status ``code``
            self.send_response(int(q.get("code", 302)))
            self.send_header("Location", q["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/big-cl":
            self._send(200, b"y" * int(q["n"]), "application/octet-stream")
        else:
            self._send(404, b"not found", "text/plain")

    def mjpeg(self, frames: int, fps: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        i = 0
        try:
            while frames <= 0 or i < frames:
                jpg = frame_jpeg(i)
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                    + jpg + b"\r\n"
                )
                self.wfile.flush()
                i += 1
                time.sleep(1.0 / fps)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def silent_server() -> socket.socket:
    """Accept connections and never answer (keeps them open)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            conn, _ = sock.accept()
            held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    return sock


def trickle_server(delay: float = 0.2) -> socket.socket:
    """Answer every connection with a status line and header lines without end, one byte at a
    time every ``delay`` seconds (each read succeeds; only a whole-request deadline stops it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)

    def trickle(conn: socket.socket) -> None:
        data = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: aaaaaaaaaa\r\n" * 100000
        try:
            for i in range(len(data)):
                conn.sendall(data[i:i + 1])
                time.sleep(delay)
        except OSError:
            pass
        finally:
            conn.close()

    def serve() -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return sock


def main() -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    silent = silent_server()
    print(f"HTTP {httpd.server_address[1]}", flush=True)
    trickle = trickle_server()
    print(f"SILENT {silent.getsockname()[1]}", flush=True)
    print(f"TRICKLE {trickle.getsockname()[1]}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
