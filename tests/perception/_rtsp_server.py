"""An RTSP camera for the perception tests: GStreamer's RTSP server on 127.0.0.1.

Runs under the system Python (it needs the Debian packages python3-gi, python3-gst-1.0 and
gir1.2-gst-rtsp-server-1.0). Serves a live 160 x 120 MJPEG test pattern at 15 fps on
``rtsp://127.0.0.1:<port>/cam`` and prints ``RTSP <port>`` once listening; runs until killed.
"""

import socket

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    Gst.init(None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120,framerate=15/1 "
        "! videoconvert ! video/x-raw,format=I420 "
        "! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        raise SystemExit("cannot attach the RTSP server")
    print(f"RTSP {port}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
