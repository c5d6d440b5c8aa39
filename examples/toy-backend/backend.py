#!/usr/bin/env python3
"""A toy backend with legacy polling endpoints, for trying the bridge.

GET  /api/scores        the current scores as JSON, with an ETag (304 when unchanged)
POST /api/scores        body {"home": 2, "away": 1} replaces the scores
GET  /api/messages?room=R&after=N
                        an incremental feed: {"room": R, "messages": [...]}, the
                        room's messages with id > N (at most 100), or its last 20
                        without `after`; ids are numbers, increasing across rooms
POST /api/messages?room=R
                        body {"text": "hi"} adds a message to room R
GET  /api/inbox         logged-in users only: {"unread": N}, the same for every
                        user, with an ETag; anyone else gets 401 {"error": "login required"}
POST /api/inbox         body {"unread": 3} replaces it
GET  /login?user=NAME   logs NAME in: sets the cookie session=<token>
GET  /auth?channel=C    204 for a logged-in session cookie, else 401 (for auth.auth_url)
GET  /                  an old-style page that polls /api/scores every second;
                        ?style=fetch (default: setInterval + fetch), ?style=jquery
                        ($.ajax with cache: false), ?style=xhr (plain XMLHttpRequest) or
                        ?style=etag (XMLHttpRequest sending If-None-Match itself, so a
                        bridge with `hold` can hold it until the next change);
                        ?url=/api/inbox polls another URL
GET  /chat?room=R       an old-style chat page that polls /api/messages?room=R&after=N
GET  /vendor/jquery.min.js   the file named by $TOY_JQUERY (jQuery is not bundled)
GET  /stats             how many requests each endpoint has served, and the last
                        1000 requests of /api/messages (target, User-Agent)

Only the Python standard library. Usage: backend.py [PORT] (default 3000;
0 picks a free port). Prints "toy backend on http://127.0.0.1:PORT" once listening.
"""
import hashlib
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

LOCK = threading.Lock()
STATE = {
    "scores": {"home": 0, "away": 0},
    "inbox": {"unread": 0},
    "requests": 0,
    "inbox_requests": 0,
    "auth_requests": 0,
    "sessions": {},  # token -> user
    "messages": [],
    "next_id": 1,
    "messages_requests": 0,
    "messages_recent": [],
}
MESSAGES_KEPT = 1000
RECENT_KEPT = 1000

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Live scores (polling)</title>
<link rel="icon" href="data:,">%(jquery)s</head>
<body>
<h1>Live scores</h1>
<p id="score">loading...</p>
<script>
// The legacy way: ask every second, whatever happens.
var style = %(style)s, url = %(url)s;
var legacy = window.__legacy = {style: style, sent: 0, completed: 0, failed: 0, shown: []};
function show(s) {
  var text = 'unread' in s ? s.unread + ' unread' : s.home + ' : ' + s.away;
  var el = document.getElementById('score');
  legacy.completed += 1;
  if (el.textContent !== text) legacy.shown.push({text: text, at: Date.now()});
  el.textContent = text;
}
function failed() { legacy.failed += 1; }
if (style === 'etag') {
  // Poll again a second after each answer, revalidating with the ETag.
  var etag = null;
  (function poll() {
    legacy.sent += 1;
    var xhr = new XMLHttpRequest();
    xhr.open('GET', url);
    if (etag) xhr.setRequestHeader('If-None-Match', etag);
    xhr.onload = function () {
      if (xhr.status === 200) { etag = xhr.getResponseHeader('ETag'); show(JSON.parse(xhr.responseText)); }
      else if (xhr.status === 304) legacy.completed += 1;
      else failed();
      setTimeout(poll, 1000);
    };
    xhr.onerror = function () { failed(); setTimeout(poll, 1000); };
    xhr.send();
  })();
} else setInterval(function () {
  legacy.sent += 1;
  if (style === 'jquery') {
    $.ajax({url: url, dataType: 'json', cache: false}).done(show).fail(failed);
  } else if (style === 'xhr') {
    var xhr = new XMLHttpRequest();
    xhr.open('GET', url);
    xhr.onload = function () { xhr.status === 200 ? show(JSON.parse(xhr.responseText)) : failed(); };
    xhr.onerror = failed;
    xhr.send();
  } else {
    fetch(url).then(function (r) { return r.json(); }).then(show, failed);
  }
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


def page(query):
    style = (query.get("style") or ["fetch"])[0]
    if style not in ("fetch", "jquery", "xhr", "etag"):
        style = "fetch"
    url = (query.get("url") or ["/api/scores"])[0]
    if url not in ("/api/scores", "/api/inbox"):
        url = "/api/scores"
    jquery = '\n<script src="/vendor/jquery.min.js"></script>' if style == "jquery" else ""
    return (PAGE % {"style": json.dumps(style), "url": json.dumps(url), "jquery": jquery}).encode()


def session_user(headers):
    """The logged-in user of the request's `session` cookie, or None."""
    for part in (headers.get("Cookie") or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == "session":
            with LOCK:
                return STATE["sessions"].get(value)
    return None


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

    def _snapshot(self, key, counter):
        """A JSON snapshot with an ETag, 304 when the client has it."""
        with LOCK:
            STATE[counter] += 1
            body = json.dumps(STATE[key]).encode()
        etag = '"%s"' % hashlib.sha1(body).hexdigest()[:16]
        if self.headers.get("If-None-Match") == etag:
            return self._send(304, extra={"ETag": etag})
        return self._send(200, body, extra={"ETag": etag, "Cache-Control": "no-cache"})

    def do_GET(self):
        path, _, query = self.path.partition("?")
        query = parse_qs(query)
        if path == "/api/scores":
            return self._snapshot("scores", "requests")
        if path == "/api/inbox":
            if session_user(self.headers) is None:
                with LOCK:
                    STATE["inbox_requests"] += 1
                return self._send(401, b'{"error":"login required"}',
                                  extra={"WWW-Authenticate": 'Cookie realm="toy"'})
            return self._snapshot("inbox", "inbox_requests")
        if path == "/login":
            user = (query.get("user") or [""])[0]
            if not user:
                return self._send(400, b'{"error":"?user= is required"}')
            token = hashlib.sha1(("toy-session:" + user).encode()).hexdigest()[:24]
            with LOCK:
                STATE["sessions"][token] = user
            return self._send(200, json.dumps({"user": user}).encode(),
                              extra={"Set-Cookie": "session=%s; Path=/; HttpOnly" % token})
        if path == "/auth":
            with LOCK:
                STATE["auth_requests"] += 1
            if session_user(self.headers) is None:
                return self._send(401, b'{"error":"login required"}')
            return self._send(204)
        if path == "/api/messages":
            return self._get_messages()
        if path == "/stats":
            with LOCK:
                body = json.dumps({"api_scores_requests": STATE["requests"],
                                   "api_inbox_requests": STATE["inbox_requests"],
                                   "auth_requests": STATE["auth_requests"],
                                   "api_messages_requests": STATE["messages_requests"],
                                   "api_messages_recent": STATE["messages_recent"]}).encode()
            return self._send(200, body)
        if path == "/vendor/jquery.min.js" and os.environ.get("TOY_JQUERY"):
            try:
                with open(os.environ["TOY_JQUERY"], "rb") as f:
                    return self._send(200, f.read(), "text/javascript; charset=utf-8")
            except OSError:
                pass
        if path == "/":
            return self._send(200, page(query), "text/html; charset=utf-8")
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
        if path not in ("/api/scores", "/api/inbox", "/api/messages"):
            return self._send(404, b'{"error":"not found"}')
        length = int(self.headers.get("Content-Length") or 0)
        try:
            value = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._send(400, b'{"error":"body must be JSON"}')
        if path == "/api/messages":
            return self._post_message(value)
        with LOCK:
            STATE["scores" if path == "/api/scores" else "inbox"] = value
        return self._send(200, json.dumps(value).encode())

    def log_message(self, fmt, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("toy backend on http://127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
