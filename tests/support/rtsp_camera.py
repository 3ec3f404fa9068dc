"""An IP camera for tests: an RTSP server (Debian's GStreamer: gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-good, python3-gi) streaming MJPEG over RTP from a live test source.

Run with the system Python, which has ``gi``:

    /usr/bin/python3 tests/support/rtsp_camera.py PORT FPS   # rtsp://127.0.0.1:PORT/cam

It prints ``ready`` once it listens, and serves until it is killed.
"""

from __future__ import annotations

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main(port: int, fps: int) -> None:
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,"
                       f"framerate={fps}/1 ! jpegenc ! rtpjpegpay name=pay0 pt=96 )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
