#!/usr/bin/env python3
"""A toy backend with a legacy polling endpoint, for trying the bridge.

GET  /api/scores        the current scores as JSON, with an ETag (304 when unchanged)
POST /api/scores        body {"home": 2, "away": 1} replaces the scores
GET  /api/messages?room=R&after=N
                        an incremental feed: {"room": R, "messages": [...]}, the
                        room's messages with id > N (at most 100), or its last 20
                        without `after`; ids are numbers, increasing across rooms
POST /api/messages?room=R
                        body {"text": "hi"} adds a message to room R
GET  /                  an old-style page that polls /api/scores every second
GET  /chat?room=R       an old-style chat page that polls /api/messages?room=R&after=N
GET  /stats             how many requests /api/scores and /api/messages have
                        served, and the last 1000 of /api/messages (target, User-Agent)

Only the Python standard library. Usage: backend.py [PORT] (default 3000; 0
picks a free port, printed on the first line).
"""
import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {"scores": {"home": 0, "away": 0}, "requests": 0,
         "messages": [], "next_id": 1, "messages_requests": 0, "messages_recent": []}
MESSAGES_KEPT = 1000
RECENT_KEPT = 1000

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

CHAT_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>Chat (polling)</title>
<link rel="icon" href="data:,"></head>
<body>
<h1>Chat</h1>
<ul id="log"></ul>
<form id="say"><input id="text" autocomplete="off"> <button>Send</button></form>
<script>
// The legacy way: ask for what is new since the last message, every second.
var room = new URLSearchParams(location.search).get('room') || 'lobby';
var after = null;
setInterval(function () {
  var url = '/api/messages?room=' + encodeURIComponent(room) + (after === null ? '' : '&after=' + after);
  fetch(url).then(function (r) { return r.json(); }).then(function (page) {
    page.messages.forEach(function (m) {
      if (after !== null && m.id <= after) return;
      var li = document.createElement('li');
      li.textContent = m.text;
      document.getElementById('log').appendChild(li);
      after = m.id;
    });
    if (after === null) after = 0;
  });
}, 1000);
document.getElementById('say').onsubmit = function (e) {
  e.preventDefault();
  fetch('/api/messages?room=' + encodeURIComponent(room), {method: 'POST',
    body: JSON.stringify({text: document.getElementById('text').value})});
  document.getElementById('text').value = '';
};
</script>
</body></html>
"""


def query_of(path):
    from urllib.parse import parse_qs, urlsplit
    return {k: v[-1] for k, v in parse_qs(urlsplit(path).query, keep_blank_values=True).items()}


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
        if path == "/api/messages":
            return self._get_messages()
        if path == "/stats":
            with LOCK:
                body = json.dumps({"api_scores_requests": STATE["requests"],
                                   "api_messages_requests": STATE["messages_requests"],
                                   "api_messages_recent": STATE["messages_recent"]}).encode()
            return self._send(200, body)
        if path == "/":
            return self._send(200, PAGE, "text/html; charset=utf-8")
        if path == "/chat":
            return self._send(200, CHAT_PAGE, "text/html; charset=utf-8")
        return self._send(404, b'{"error":"not found"}')

    def _get_messages(self):
        query = query_of(self.path)
        room = query.get("room", "lobby")
        with LOCK:
            STATE["messages_requests"] += 1
            STATE["messages_recent"].append({"target": self.path,
                                             "agent": self.headers.get("User-Agent") or ""})
            del STATE["messages_recent"][:-RECENT_KEPT]
            mine = [m for m in STATE["messages"] if m["room"] == room]
        if "after" in query:
            try:
                after = int(query["after"])
            except ValueError:
                return self._send(400, b'{"error":"after must be a message id"}')
            page = [m for m in mine if m["id"] > after][:100]
        else:
            page = mine[-20:]
        body = json.dumps({"room": room, "messages": page}).encode()
        return self._send(200, body, extra={"Cache-Control": "no-cache"})

    def _post_message(self, body):
        room = query_of(self.path).get("room", "lobby")
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return self._send(400, b'{"error":"body must be {\\"text\\": \\"...\\"}"}')
        with LOCK:
            message = {"id": STATE["next_id"], "room": room, "text": body["text"]}
            STATE["next_id"] += 1
            STATE["messages"].append(message)
            del STATE["messages"][:-MESSAGES_KEPT]
        return self._send(201, json.dumps(message).encode())

    do_HEAD = do_GET

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path not in ("/api/scores", "/api/messages"):
            return self._send(404, b'{"error":"not found"}')
        length = int(self.headers.get("Content-Length") or 0)
        try:
            scores = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._send(400, b'{"error":"body must be JSON"}')
        if path == "/api/messages":
            return self._post_message(scores)
        with LOCK:
            STATE["scores"] = scores
        return self._send(200, json.dumps(scores).encode())

    def log_message(self, fmt, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("toy backend on http://127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
