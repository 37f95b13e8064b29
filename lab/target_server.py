"""The lab's traffic target, run inside the lab's network namespace by :mod:`atomwatch.lab.network`.

``python -m atomwatch.lab.target_server ADDRESS`` serves HTTP on ADDRESS:8080 (GET answers a small page,
POST/PUT read and drop the body) and a TCP sink on ADDRESS:9000 that reads and drops whatever a
guest sends (the ``exfil`` workload's destination). It counts requests and bytes and prints a
one-line summary every minute.
"""

from __future__ import annotations

import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .paths import TARGET_HTTP_PORT, TARGET_SINK_PORT

PAGE = b"<html><body>" + b"atomwatch lab target " * 40 + b"</body></html>\n"
_counts = {"requests": 0, "sink_bytes": 0}
_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def _reply(self) -> None:
        body = PAGE
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with _lock:
            _counts["requests"] += 1

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._reply()

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                break
            length -= len(chunk)
        self._reply()

    do_PUT = do_POST

    def log_message(self, format: str, *args) -> None:  # quiet: a flood would fill the log
        pass


class Sink(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            with _lock:
                _counts["sink_bytes"] += len(data)


class ThreadingTCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str]) -> int:
    address = argv[0] if argv else "0.0.0.0"
    http = ThreadingHTTPServer((address, TARGET_HTTP_PORT), Handler)
    http.daemon_threads = True
    sink = ThreadingTCP((address, TARGET_SINK_PORT), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(f"target: http://{address}:{TARGET_HTTP_PORT}/ and sink {address}:{TARGET_SINK_PORT}", flush=True)
    while True:
        time.sleep(60)
        with _lock:
            print(f"target: {_counts['requests']} requests, {_counts['sink_bytes']} sink bytes", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
