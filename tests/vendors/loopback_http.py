"""The plumbing every vendor stand-in shares: a threaded HTTP server on 127.0.0.1 in a daemon thread,
its base URL, and start/stop (also as a context manager). Each stand-in supplies its own handler class."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LoopbackHttpServer:
    """Base of a stand-in server; call `_serve(handler_class, port, name)` from `__init__`."""

    httpd: ThreadingHTTPServer
    thread: threading.Thread

    def _serve(self, handler: type[BaseHTTPRequestHandler], port: int, name: str) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
