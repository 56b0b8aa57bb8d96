"""The benchmark's load generators count every request and every error against a real local HTTP server."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import load


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn

    def do_GET(self):  # noqa: N802 (the http.server API)
        ok = self.path == "/ok" and self.headers.get("Authorization") == "Bearer t"
        body = b'{"status": "running"}' if ok else b"{}"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("client", [load.constant_rate, load.constant_rate_threads], ids=["asyncio", "threads"])
def test_every_scheduled_request_is_sent_and_timed(server, client):
    result = client(server + "/ok", 100, 1.0, headers={"Authorization": "Bearer t"})
    assert result.requests == 100 and result.errors == 0
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms < 1000
    assert result.rate == pytest.approx(100, rel=0.3)


@pytest.mark.parametrize("client", [load.constant_rate, load.constant_rate_threads], ids=["asyncio", "threads"])
def test_non_200_answers_count_as_errors(server, client):
    result = client(server + "/missing", 50, 0.4, headers={"Authorization": "Bearer t"})
    assert result.requests == 20 and result.errors == 20
