#!/usr/bin/env python3
"""A toy backend with a legacy polling endpoint, for trying the bridge.

GET  /api/scores        the current scores as JSON, with an ETag (304 when unchanged)
POST /api/scores        body {"home": 2, "away": 1} replaces the scores
GET  /                  an old-style page that polls /api/scores every second
GET  /stats             how many requests /api/scores has served

Only the Python standard library. Usage: backend.py [PORT] (default 3000).
"""
import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {"scores": {"home": 0, "away": 0}, "requests": 0}

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>Live scores (polling)</title>
<link rel="icon" href="data:,"></head>
<body>
<h1>Live scores</h1>
<p id="score">loading...</p>
<script>
// The legacy way: ask every second, whatever happens.
setInterval(function () {
  fetch('/api/scores').then(function (r) { return r.json(); }).then(function (s) {
    document.getElementById('score').textContent = s.home + ' : ' + s.away;
  });
}, 1000);
</script>
</body></html>
"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, body=b"", content_type="application/json", extra=None):
        self.send_response(status)
        if status != 304:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/api/scores":
            with LOCK:
                STATE["requests"] += 1
                body = json.dumps(STATE["scores"]).encode()
            etag = '"%s"' % hashlib.sha1(body).hexdigest()[:16]
            if self.headers.get("If-None-Match") == etag:
                return self._send(304, extra={"ETag": etag})
            return self._send(200, body, extra={"ETag": etag, "Cache-Control": "no-cache"})
        if path == "/stats":
            with LOCK:
                body = json.dumps({"api_scores_requests": STATE["requests"]}).encode()
            return self._send(200, body)
        if path == "/":
            return self._send(200, PAGE, "text/html; charset=utf-8")
        return self._send(404, b'{"error":"not found"}')

    do_HEAD = do_GET

    def do_POST(self):
        if self.path.split("?", 1)[0] != "/api/scores":
            return self._send(404, b'{"error":"not found"}')
        length = int(self.headers.get("Content-Length") or 0)
        try:
            scores = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._send(400, b'{"error":"body must be JSON"}')
        with LOCK:
            STATE["scores"] = scores
        return self._send(200, json.dumps(scores).encode())

    def log_message(self, fmt, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("toy backend on http://127.0.0.1:%d" % port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
