#!/usr/bin/env python3
"""Small mixed load for a running pollbridge, so that every transport's
counters and histograms move while check-live.sh's Prometheus watches.
Standard library only; every loop is bounded in time and only talks to the
addresses given (use loopback).

  gateway_load.py upstream [--port 0]
      a trivial HTTP upstream for the reverse proxy and the legacy bridge;
      prints `upstream listening 127.0.0.1:PORT`. Answers 200 with a small JSON
      body that changes every 2 s, with an ETag (304 on a current If-None-Match).

  gateway_load.py load --public HOST:PORT --admin HOST:PORT [--duration 60]
      for --duration seconds (or until killed):
      - publishes a JSON message on channel `obs-load` every 50 ms (admin POST /publish/obs-load)
      - 2 WebSocket subscribers  (GET /rt/ws/obs-load)
      - 1 SSE subscriber         (GET /rt/sse/obs-load)
      - 2 long-poll loops        (GET /rt/poll/obs-load?since=ID&timeout=5&cid=...)
      - 1 Ajax-style poller      (GET /rt/poll/obs-quiet?timeout=0&cid=...: empty answers)
      - fallen-back browsers     (a new `cid` every 3 s whose first poll reports
        `fallback=REASON`, cycling through every reason and one unknown one)
      - refused WebSocket upgrades every 2 s: one without Sec-WebSocket-Key
        (400, reason bad_handshake) and, with --denied-origin ORIGIN, one from an
        origin not on auth.allowed_origins (403, reason origin)
      - proxied requests         (GET /obs-load/page every 100 ms, to the upstream)
      - with --bridge-path PATH: a legacy poller of a bridged URL (GET PATH every
        200 ms with If-None-Match), as an unchanged Ajax page would
      Exits 0 at the end; exits 1 early if the gateway cannot be reached.
"""
import argparse
import base64
import http.client
import http.server
import json
import os
import socket
import socketserver
import sys
import threading
import time

CHANNEL = "obs-load"
QUIET = "obs-quiet"
# What a browser may report when it falls back from WebSocket (src/metrics.rs).
FALLBACK_REASONS = ["ws_error", "ws_timeout", "ws_closed_before_open", "ws_blocked", "other"]


def split_addr(a):
    host, port = a.rsplit(":", 1)
    return host, int(port)


# ------------------------------------------------------------------ upstream

def serve_upstream(port):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            version = int(time.time() / 2)
            etag = f'"v{version}"'
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.dumps({"version": version, "page": "x" * 200}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    srv = S(("127.0.0.1", port), H)
    print(f"upstream listening 127.0.0.1:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------------ load

class Load:
    def __init__(self, public, admin, duration, bridge_path=None, denied_origin=None):
        self.public, self.admin = split_addr(public), split_addr(admin)
        self.bridge_path = bridge_path
        self.denied_origin = denied_origin
        self.end = time.time() + duration
        self.errors = []
        self.counts = {}
        self.lock = threading.Lock()

    def running(self):
        return time.time() < self.end

    def count(self, what, n=1):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def error(self, what, e):
        with self.lock:
            self.errors.append(f"{what}: {e}")

    def publisher(self):
        conn = None
        i = 0
        while self.running():
            i += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(*self.admin, timeout=5)
                body = json.dumps({"n": i, "text": "load " * 20})
                conn.request("POST", f"/publish/{CHANNEL}", body,
                             {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                self.count(f"publish {r.status}")
            except (OSError, http.client.HTTPException) as e:
                self.error("publish", e)
                conn = None
                time.sleep(0.2)
            time.sleep(0.05)

    def websocket(self):
        while self.running():
            try:
                s = socket.create_connection(self.public, timeout=2)
                key = base64.b64encode(os.urandom(16)).decode()
                s.sendall((f"GET /rt/ws/{CHANNEL} HTTP/1.1\r\nHost: {self.public[0]}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise OSError("closed during handshake")
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                if b" 101 " not in head.split(b"\r\n")[0]:
                    raise OSError(head.split(b"\r\n")[0].decode())
                s.settimeout(0.5)
                while self.running():
                    try:
                        chunk = s.recv(65536)
                    except socket.timeout:
                        continue
                    if not chunk:
                        raise OSError("closed by gateway")
                    buf += chunk
                    buf = self._ws_frames(s, buf)
                # Close handshake (masked, code 1000).
                s.sendall(bytes([0x88, 0x82]) + b"\0\0\0\0" + b"\x03\xe8")
                s.close()
            except OSError as e:
                self.error("websocket", e)
                time.sleep(0.5)

    def _ws_frames(self, s, buf):
        while len(buf) >= 2:
            op, ln = buf[0] & 0x0F, buf[1] & 0x7F
            pos = 2
            if ln == 126:
                if len(buf) < 4:
                    break
                ln, pos = int.from_bytes(buf[2:4], "big"), 4
            elif ln == 127:
                if len(buf) < 10:
                    break
                ln, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + ln:
                break
            payload, buf = buf[pos:pos + ln], buf[pos + ln:]
            if op == 0x1:
                self.count("ws frames")
            elif op == 0x9:  # ping -> masked pong with the same payload
                s.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif op == 0x8:
                raise OSError("close frame from gateway")
        return buf

    def sse(self):
        while self.running():
            try:
                s = socket.create_connection(self.public, timeout=2)
                s.sendall((f"GET /rt/sse/{CHANNEL} HTTP/1.1\r\nHost: {self.public[0]}\r\n"
                           f"Accept: text/event-stream\r\n\r\n").encode())
                s.settimeout(0.5)
                while self.running():
                    try:
                        chunk = s.recv(65536)
                    except socket.timeout:
                        continue
                    if not chunk:
                        raise OSError("closed by gateway")
                    self.count("sse events", chunk.count(b"\ndata:") + chunk.startswith(b"data:"))
                s.close()
            except OSError as e:
                self.error("sse", e)
                time.sleep(0.5)

    def longpoll(self, channel, timeout, cid):
        conn, since = None, None
        while self.running():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(*self.public, timeout=timeout + 5)
                q = f"timeout={timeout}&cid={cid}" + (f"&since={since}" if since is not None else "")
                conn.request("GET", f"/rt/poll/{channel}?{q}")
                r = conn.getresponse()
                body = r.read()
                if r.status == 200:
                    doc = json.loads(body)
                    since = doc.get("last_id", since)
                    self.count(f"polls {channel} {'messages' if doc.get('messages') else 'empty'}")
                else:
                    self.count(f"polls {channel} HTTP {r.status}")
            except (OSError, http.client.HTTPException, ValueError) as e:
                self.error(f"longpoll {channel}", e)
                conn = None
                time.sleep(0.2)
            if timeout == 0:
                time.sleep(0.2)

    def fallen_back(self):
        # A browser whose client library gave up on WebSocket reports why on
        # its first poll (once per page load), then polls on with the same cid.
        reasons = FALLBACK_REASONS + ["flash_blocked"]  # unknown -> counted as `other`
        conn, page = None, 0
        while self.running():
            page += 1
            reason, cid = reasons[(page - 1) % len(reasons)], f"obs-fallback-{page}"
            for i in range(3):
                q = f"timeout=0&cid={cid}" + (f"&fallback={reason}" if i == 0 else "")
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(*self.public, timeout=5)
                    conn.request("GET", f"/rt/poll/{CHANNEL}?{q}")
                    r = conn.getresponse()
                    r.read()
                    self.count(f"fallback polls HTTP {r.status}")
                except (OSError, http.client.HTTPException) as e:
                    self.error("fallback poll", e)
                    conn = None
                time.sleep(1)

    def refused_upgrades(self):
        # Upgrades the gateway must refuse: bad handshake, and a denied origin.
        attempts = [("bad_handshake", "", "400")]
        if self.denied_origin:
            key = base64.b64encode(os.urandom(16)).decode()
            attempts.append(("origin", f"Sec-WebSocket-Key: {key}\r\nOrigin: {self.denied_origin}\r\n",
                             "403"))
        while self.running():
            for reason, extra, want in attempts:
                try:
                    with socket.create_connection(self.public, timeout=2) as s:
                        s.sendall((f"GET /rt/ws/{CHANNEL} HTTP/1.1\r\nHost: {self.public[0]}\r\n"
                                   f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                   f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
                        status = s.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
                    if f" {want} " not in status + " ":
                        raise OSError(f"want {want}, got {status!r}")
                    self.count(f"refused upgrade {reason} {want}")
                except OSError as e:
                    self.error(f"refused upgrade {reason}", e)
            time.sleep(2)

    def proxy(self):
        conn = None
        while self.running():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(*self.public, timeout=5)
                conn.request("GET", "/obs-load/page")
                r = conn.getresponse()
                r.read()
                self.count(f"proxy {r.status}")
            except (OSError, http.client.HTTPException) as e:
                self.error("proxy", e)
                conn = None
            time.sleep(0.1)

    def legacy_poller(self):
        conn, etag = None, None
        while self.running():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(*self.public, timeout=5)
                conn.request("GET", self.bridge_path, headers={"If-None-Match": etag} if etag else {})
                r = conn.getresponse()
                r.read()
                etag = r.getheader("ETag") or etag
                self.count(f"legacy {r.status}")
            except (OSError, http.client.HTTPException) as e:
                self.error("legacy poll", e)
                conn = None
            time.sleep(0.2)

    def run(self):
        # Fail fast if the gateway is not there at all.
        for addr in (self.public, self.admin):
            try:
                socket.create_connection(addr, timeout=2).close()
            except OSError as e:
                print(f"gateway_load: cannot connect to {addr[0]}:{addr[1]}: {e}", file=sys.stderr)
                return 1
        workers = [self.publisher, self.websocket, self.websocket, self.sse,
                   lambda: self.longpoll(CHANNEL, 5, "obs-lp-1"),
                   lambda: self.longpoll(CHANNEL, 5, "obs-lp-2"),
                   lambda: self.longpoll(QUIET, 0, "obs-ajax"), self.fallen_back,
                   self.refused_upgrades, self.proxy]
        if self.bridge_path:
            workers.append(self.legacy_poller)
        threads = [threading.Thread(target=w, daemon=True) for w in workers]
        for t in threads:
            t.start()
        try:
            while self.running():
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        self.end = 0
        for t in threads:
            t.join(timeout=6)
        print("gateway_load:", json.dumps(self.counts, sort_keys=True))
        if self.errors:
            print(f"gateway_load: {len(self.errors)} errors, first: {self.errors[:3]}")
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("upstream")
    u.add_argument("--port", type=int, default=0)
    lo = sub.add_parser("load")
    lo.add_argument("--public", required=True)
    lo.add_argument("--admin", required=True)
    lo.add_argument("--duration", type=float, default=60)
    lo.add_argument("--bridge-path", help="path of a [[bridge]] route to poll the legacy way")
    lo.add_argument("--denied-origin",
                    help="an Origin the gateway's auth.allowed_origins refuses (for upgrades refused with reason origin)")
    a = ap.parse_args()
    if a.cmd == "upstream":
        serve_upstream(a.port)
        return 0
    return Load(a.public, a.admin, a.duration, a.bridge_path, a.denied_origin).run()


if __name__ == "__main__":
    sys.exit(main())
