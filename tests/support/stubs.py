"""A tiny HTTP server on a thread of the test, for what stands on the far side of a role: an advertiser's landing
page, an SQS endpoint that records what it was sent."""

from __future__ import annotations

import http.server
import threading


class StubHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that answers with `reply()` and logs nothing, so a test's output stays its own."""

    def reply(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class StubServer:
    """`handler` served on a free 127.0.0.1 port (`base`) from a daemon thread until `close()`."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
