#!/usr/bin/env python3
"""Soak test: the gateway under a mixed load, its RSS and open fds sampled.

Run through scripts/soak.sh. Python 3 standard library only.

    soak.py run --bin BIN --duration SECONDS --interval SECONDS
    soak.py upstream --port-file FILE        (the backend, started by `run`)

`run` starts an upstream (this file, `upstream` mode, in its own process),
starts the gateway in front of it on free loopback ports, then for
DURATION seconds runs, with a bounded number of threads:

  publishers        POST /publish/{channel} on the admin listener (JSON and
                    text bodies, now and then a batch)
  WebSocket         subscribers that read for a few seconds, then leave with
                    a close handshake, a bare FIN or a RST, and resume with
                    `since` (ids must follow on without a gap); a command
                    client (subscribe, unsubscribe, publish, bad commands)
  SSE               streams that resume with Last-Event-ID
  long-poll         keep-alive cursor loops, some abandoned while held
  proxy             GETs, POSTs and chunked streams through to the upstream,
                    checked byte for byte; some abandoned mid-response
  vanishing clients half a request head, half a WebSocket handshake, half a
                    WebSocket frame, a WebSocket or SSE dropped without a
                    close handshake, a publish body cut short, a proxied
                    request dropped before the upstream answers

Every INTERVAL seconds it samples the gateway's VmRSS (/proc/PID/status)
and open fds (/proc/PID/fd), prints the series, then checks:

  - each kind of client got through (errors at most 1 % of its operations;
    WebSocket, SSE and long-poll ids in order with no gap);
  - RSS flat after warm-up (the first 20 % of the run): over the
    post-warm-up samples, max - min <= max(8 MiB, 20 % of the minimum), and
    the mean of the last quarter exceeds the mean of the first quarter by at
    most max(4 MiB, 10 %);
  - once the load stops, the fd count returns to its pre-load baseline
    (within 3) and every `pollbridge_connections` gauge to 0;
  - no panic in the gateway's log; SIGTERM ends it with exit code 0.

The last line is `soak: N passed, M failed`; the exit code is 1 on any
failure.
"""

import argparse
import base64
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MiB = 1024 * 1024
CHANNELS = ["soak.0", "soak.1", "soak.2", "soak.3"]
CHAT = "soak.chat"
STOP = threading.Event()

# ----------------------------------------------------------------- upstream


def pattern(n, seed):
    """n deterministic bytes, so proxied bodies can be checked exactly."""
    block = bytes((seed + i) % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def query(self):
        _, _, q = self.path.partition("?")
        return dict(p.split("=", 1) for p in q.split("&") if "=" in p)

    def reply(self, body, status=200, ctype="application/octet-stream"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        q = self.query()
        if self.path.startswith("/bytes"):
            self.reply(pattern(int(q.get("n", "0")), int(q.get("seed", "0"))))
        elif self.path.startswith("/slow"):
            time.sleep(int(q.get("ms", "500")) / 1000)
            self.reply(b"slow")
        elif self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(q.get("chunks", "5"))):
                chunk = pattern(1000, i)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.02)
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.reply(b"not found", 404, "text/plain")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply(body)


class UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients that vanish mid-response break pipes; that is the point


def run_upstream(port_file):
    server = UpstreamServer(("127.0.0.1", 0), Upstream)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


# ----------------------------------------------------------------- client plumbing


class Stats:
    """Per-kind counters, shared by every client thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.samples = {}

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def error(self, kind, exc):
        with self.lock:
            key = kind + ".errors"
            self.counts[key] = self.counts.get(key, 0) + 1
            self.samples.setdefault(kind, []).append(repr(exc)[:200])

    def get(self, key):
        with self.lock:
            return self.counts.get(key, 0)


STATS = Stats()


class Stopped(Exception):
    pass


class Conn:
    """A TCP connection with a read buffer and deadline-bounded reads."""

    def __init__(self, addr, timeout=0.5):
        self.sock = socket.create_connection(addr, timeout=5)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, data):
        self.sock.sendall(data)

    def fill(self, deadline):
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("read deadline")
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                if STOP.is_set():
                    raise Stopped()
                if time.monotonic() > deadline:
                    raise TimeoutError("read deadline")
                continue
            if not chunk:
                raise EOFError("closed by peer")
            self.buf += chunk
            return

    def read_until(self, sep, deadline):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + len(sep)]
                return out
            self.fill(deadline)

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            self.fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def close(self, abrupt=False):
        try:
            if abrupt:  # RST instead of FIN
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass


def request(path, method="GET", headers=(), body=b""):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "User-Agent: pollbridge-soak"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_head(conn, deadline):
    head = conn.read_until(b"\r\n\r\n", deadline).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), headers


def read_body(conn, headers, deadline):
    if "content-length" in headers:
        return conn.read_exact(int(headers["content-length"]), deadline)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        for chunk in chunks(conn, deadline):
            out += chunk
        return bytes(out)
    out = bytearray()
    try:
        while True:
            conn.fill(deadline)
            out += conn.buf
            conn.buf.clear()
    except EOFError:
        return bytes(out)


def chunks(conn, deadline):
    while True:
        size = int(conn.read_until(b"\r\n", deadline).split(b";")[0], 16)
        if size == 0:
            while conn.read_until(b"\r\n", deadline):  # trailers
                pass
            return
        yield conn.read_exact(size, deadline)
        conn.read_exact(2, deadline)


class Ws:
    """A minimal RFC 6455 client: masked frames out, unmasked frames in."""

    def __init__(self, addr, path, deadline):
        self.conn = Conn(addr)
        key = base64.b64encode(os.urandom(16)).decode()
        self.conn.send(
            request(
                path,
                headers=[
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Key", key),
                    ("Sec-WebSocket-Version", "13"),
                ],
            )
        )
        status, _ = read_head(self.conn, deadline)
        if status != 101:
            self.conn.close()
            raise RuntimeError(f"WebSocket handshake answered {status}")

    @staticmethod
    def frame(opcode, payload, fin=True):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + masked

    def send_text(self, text):
        self.conn.send(self.frame(0x1, text.encode()))

    def recv(self, deadline):
        """The next text message, or None when the server closed."""
        while True:
            b0, b1 = self.conn.read_exact(2, deadline)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self.conn.read_exact(2, deadline))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.conn.read_exact(8, deadline))[0]
            payload = self.conn.read_exact(n, deadline)
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self.conn.send(self.frame(0xA, payload))
            elif opcode == 0x8:
                return None
            elif opcode == 0x1:
                return payload.decode()

    def close_handshake(self):
        try:
            self.conn.send(self.frame(0x8, struct.pack(">H", 1000)))
            deadline = time.monotonic() + 2
            while self.recv(deadline) is not None:
                pass
        except (OSError, EOFError, TimeoutError, Stopped):
            pass
        self.conn.close()


class Ordered:
    """Checks that one client's ids on one channel follow on without a gap."""

    def __init__(self, kind):
        self.kind = kind
        self.last = None
        self.truncated = False

    def see(self, msg_id):
        if self.last is not None and msg_id != self.last + 1 and not self.truncated:
            STATS.add(self.kind + ".gaps")
            STATS.error(self.kind, f"id {msg_id} after {self.last}")
        self.truncated = False
        self.last = msg_id
        STATS.add(self.kind + ".messages")


def client_loop(kind, body):
    """Runs `body()` until STOP; an exception is one error, then a pause."""
    while not STOP.is_set():
        try:
            body()
        except Stopped:
            return
        except Exception as e:  # noqa: BLE001 - every failure is counted
            if STOP.is_set():
                return
            STATS.error(kind, e)
            time.sleep(0.2)


# ----------------------------------------------------------------- the clients


def publisher(env, rate, seed):
    rnd = random.Random(seed)
    state = {"conn": None}

    def once():
        if state["conn"] is None:
            state["conn"] = Conn(env.admin)
        conn = state["conn"]
        channel = rnd.choice(CHANNELS)
        roll = rnd.random()
        if roll < 0.05:
            items = [{"channel": rnd.choice(CHANNELS), "data": {"batch": i}} for i in range(3)]
            conn.send(
                request("/publish", "POST", [("Content-Type", "application/json")], json.dumps(items).encode())
            )
        elif roll < 0.55:
            body = json.dumps({"seq": rnd.random(), "pad": "x" * rnd.randint(0, 2000), "é": [1, None]})
            conn.send(
                request(f"/publish/{channel}", "POST", [("Content-Type", "application/json")], body.encode())
            )
        else:
            body = ("line\n" * rnd.randint(0, 50)) + "text ü " + str(rnd.random())
            conn.send(request(f"/publish/{channel}", "POST", body=body.encode()))
        deadline = time.monotonic() + 5
        status, headers = read_head(conn, deadline)
        read_body(conn, headers, deadline)
        if status != 200:
            raise RuntimeError(f"publish answered {status}")
        STATS.add("publish.ok")
        time.sleep(rnd.expovariate(rate))

    def body():
        try:
            once()
        except BaseException:
            if state["conn"] is not None:
                state["conn"].close()
            state["conn"] = None
            raise

    client_loop("publish", body)


def ws_subscriber(env, seed, max_session):
    rnd = random.Random(seed)
    channel = CHANNELS[seed % len(CHANNELS)]
    order = Ordered("websocket")

    def session():
        since = 0 if order.last is None else order.last
        end = time.monotonic() + rnd.uniform(1, max_session)
        ws = Ws(env.public, f"/rt/ws/{channel}?since={since}", time.monotonic() + 5)
        STATS.add("websocket.sessions")
        try:
            while time.monotonic() < end:
                try:
                    text = ws.recv(end)
                except TimeoutError:
                    break
                if text is None:
                    raise EOFError("closed by the gateway")
                msg = json.loads(text)
                if msg.get("type") == "subscribed":
                    order.truncated = msg.get("truncated", False)
                elif "id" in msg and msg.get("channel") == channel:
                    order.see(msg["id"])
        finally:
            how = rnd.random()
            if how < 0.5:
                ws.close_handshake()
            else:
                ws.conn.close(abrupt=how < 0.75)  # RST, or a FIN without a close frame

    client_loop("websocket", session)


def ws_commander(env, seed):
    """Runtime commands on one connection; each must get its answer."""
    rnd = random.Random(seed)

    def session():
        ws = Ws(env.public, f"/rt/ws/{CHAT}", time.monotonic() + 5)
        subscribed = set()
        try:
            for _ in range(rnd.randint(5, 40)):
                if STOP.is_set():
                    break
                channel = rnd.choice(CHANNELS)
                roll = rnd.random()
                if roll < 0.3 and channel not in subscribed:
                    command, expect = {"type": "subscribe", "channel": channel}, "subscribed"
                    subscribed.add(channel)
                elif roll < 0.6 and subscribed:
                    channel = subscribed.pop()
                    command, expect = {"type": "unsubscribe", "channel": channel}, "unsubscribed"
                elif roll < 0.85:
                    command, expect = {"type": "publish", "channel": CHAT, "data": {"n": rnd.random()}}, "published"
                else:
                    command, expect = rnd.choice([{"type": "dance"}, {"type": "subscribe", "channel": "bad name"}, "{not json"]), "error"
                ws.send_text(command if isinstance(command, str) else json.dumps(command))
                deadline = time.monotonic() + 5
                while True:
                    text = ws.recv(deadline)
                    if text is None:
                        raise EOFError("closed by the gateway")
                    kind = json.loads(text).get("type")
                    if kind == expect:
                        STATS.add("commands.answers")
                        break
                    if kind == "error":
                        raise RuntimeError(f"{command} answered {text}")
                time.sleep(rnd.uniform(0.01, 0.2))
        finally:
            if rnd.random() < 0.7:
                ws.close_handshake()
            else:
                ws.conn.close(abrupt=True)

    client_loop("commands", session)


def sse_client(env, seed, max_session):
    rnd = random.Random(seed)
    channel = CHANNELS[seed % len(CHANNELS)]
    order = Ordered("sse")

    def session():
        headers = [("Accept", "text/event-stream")]
        headers.append(("Last-Event-ID", str(order.last or 0)))
        conn = Conn(env.public)
        end = time.monotonic() + rnd.uniform(1, max_session)
        try:
            conn.send(request(f"/rt/sse/{channel}", headers=headers))
            status, resp = read_head(conn, time.monotonic() + 5)
            if status != 200:
                raise RuntimeError(f"SSE answered {status}")
            STATS.add("sse.sessions")
            pending = b""
            try:
                for chunk in chunks(conn, end):
                    pending += chunk
                    while b"\n\n" in pending:
                        event, pending = pending.split(b"\n\n", 1)
                        lines = event.decode().split("\n")
                        fields = dict(line.split(": ", 1) for line in lines if ": " in line)
                        if fields.get("event") == "truncated":
                            order.truncated = True
                        elif "data" in fields and "id" in fields:
                            envelope = json.loads(fields["data"])
                            # The SSE id is the cursor `N-E`: message id and epoch.
                            if envelope["id"] != int(fields["id"].split("-", 1)[0]):
                                raise ValueError("SSE id differs from the envelope id")
                            order.see(envelope["id"])
                raise EOFError("SSE stream ended")
            except TimeoutError:
                pass
        finally:
            conn.close(abrupt=rnd.random() < 0.5)

    client_loop("sse", session)


def longpoller(env, seed, max_timeout):
    rnd = random.Random(seed)
    channel = CHANNELS[seed % len(CHANNELS)]
    order = Ordered("longpoll")
    state = {"conn": None}

    def once():
        if state["conn"] is None:
            state["conn"] = Conn(env.public)
        conn = state["conn"]
        since = order.last or 0
        timeout = rnd.choice([0] + list(range(1, max_timeout + 1)))
        conn.send(request(f"/rt/poll/{channel}?since={since}&timeout={timeout}"))
        if rnd.random() < 0.05:  # walk away from a held poll
            state["conn"] = None
            conn.close(abrupt=rnd.random() < 0.5)
            STATS.add("longpoll.abandoned")
            return
        deadline = time.monotonic() + timeout + 5
        status, headers = read_head(conn, deadline)
        body = read_body(conn, headers, deadline)
        if status != 200:
            raise RuntimeError(f"long-poll answered {status}: {body[:100]!r}")
        answer = json.loads(body)
        if answer.get("truncated"):
            order.truncated = True
        for msg in answer["messages"]:
            order.see(msg["id"])
        STATS.add("longpoll.polls")
        if headers.get("connection", "").lower() == "close":
            conn.close()
            state["conn"] = None

    def body():
        try:
            once()
        except BaseException:
            if state["conn"] is not None:
                state["conn"].close()
            state["conn"] = None
            raise

    client_loop("longpoll", body)


def proxy_client(env, seed):
    rnd = random.Random(seed)
    state = {"conn": None}

    def once():
        if state["conn"] is None:
            state["conn"] = Conn(env.public)
        conn = state["conn"]
        roll = rnd.random()
        deadline = time.monotonic() + 10
        if roll < 0.5:
            n, s = rnd.choice([0, 10, 1000, 70000]), rnd.randint(0, 250)
            conn.send(request(f"/bytes?n={n}&seed={s}"))
            expected = pattern(n, s)
        elif roll < 0.8:
            expected = os.urandom(rnd.choice([1, 500, 20000]))
            conn.send(request("/echo", "POST", body=expected))
        else:
            k = rnd.randint(1, 10)
            conn.send(request(f"/stream?chunks={k}"))
            expected = b"".join(pattern(1000, i) for i in range(k))
        status, headers = read_head(conn, deadline)
        if rnd.random() < 0.1:  # walk away mid-response
            state["conn"] = None
            conn.close(abrupt=True)
            STATS.add("proxy.abandoned")
            return
        body = read_body(conn, headers, deadline)
        if status != 200 or body != expected:
            raise RuntimeError(f"proxied answer {status}, {len(body)} bytes, expected {len(expected)}")
        STATS.add("proxy.ok")
        if headers.get("connection", "").lower() == "close":
            conn.close()
            state["conn"] = None
        time.sleep(rnd.uniform(0, 0.05))

    def body():
        try:
            once()
        except BaseException:
            if state["conn"] is not None:
                state["conn"].close()
            state["conn"] = None
            raise

    client_loop("proxy", body)


def vanisher(env, seed):
    """Clients that leave at the worst moment. Their own errors don't count;
    the gateway must shrug them off (checked by everything else)."""
    rnd = random.Random(seed)
    ws_head = request(
        f"/rt/ws/{CHANNELS[0]}",
        headers=[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", base64.b64encode(b"0123456789abcdef").decode()),
            ("Sec-WebSocket-Version", "13"),
        ],
    )

    def half_head():
        c = Conn(env.public)
        head = request(f"/rt/poll/{CHANNELS[1]}?since=0&timeout=1")
        c.send(head[: rnd.randint(1, len(head) - 2)])
        if rnd.random() < 0.2:
            time.sleep(rnd.uniform(0, 1.5))  # a slow, then silent, client
        c.close(abrupt=rnd.random() < 0.5)

    def half_handshake():
        c = Conn(env.public)
        c.send(ws_head[: rnd.randint(1, len(ws_head) - 2)])
        c.close(abrupt=rnd.random() < 0.5)

    def half_frame():
        ws = Ws(env.public, f"/rt/ws/{CHANNELS[2]}", time.monotonic() + 5)
        frame = Ws.frame(0x1, json.dumps({"type": "subscribe", "channel": CHANNELS[3], "pad": "p" * 300}).encode())
        ws.conn.send(frame[: rnd.randint(1, len(frame) - 1)])
        ws.conn.close(abrupt=rnd.random() < 0.5)

    def drop_ws():
        ws = Ws(env.public, f"/rt/ws/{rnd.choice(CHANNELS)}?since=0", time.monotonic() + 5)
        try:
            ws.recv(time.monotonic() + rnd.uniform(0, 0.5))
        except TimeoutError:
            pass
        ws.conn.close(abrupt=rnd.random() < 0.5)

    def drop_sse():
        c = Conn(env.public)
        c.send(request(f"/rt/sse/{rnd.choice(CHANNELS)}?since=0"))
        try:
            c.fill(time.monotonic() + rnd.uniform(0, 0.5))
        except TimeoutError:
            pass
        c.close(abrupt=rnd.random() < 0.5)

    def short_publish():
        c = Conn(env.admin)
        full = request(f"/publish/{CHANNELS[0]}", "POST", body=b"z" * 1000)
        c.send(full[: len(full) - rnd.randint(1, 900)])
        c.close(abrupt=rnd.random() < 0.5)

    def early_proxy_exit():
        c = Conn(env.public)
        c.send(request("/slow?ms=300"))
        time.sleep(rnd.uniform(0, 0.2))
        c.close(abrupt=rnd.random() < 0.5)

    moves = [half_head, half_handshake, half_frame, drop_ws, drop_sse, short_publish, early_proxy_exit]
    while not STOP.is_set():
        move = rnd.choice(moves)
        try:
            move()
            STATS.add("vanish." + move.__name__)
        except (Stopped, OSError, EOFError, TimeoutError, RuntimeError):
            STATS.add("vanish.errors")
        time.sleep(rnd.uniform(0.02, 0.1))


# ----------------------------------------------------------------- the gateway


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def http_get(addr, path):
    conn = Conn(addr)
    try:
        conn.send(request(path, headers=[("Connection", "close")]))
        deadline = time.monotonic() + 5
        status, headers = read_head(conn, deadline)
        return status, read_body(conn, headers, deadline)
    finally:
        conn.close()


def connection_gauges(admin):
    _, body = http_get(admin, "/metrics")
    gauges = {}
    for m in re.finditer(rb'^pollbridge_connections\{transport="(\w+)"\} (\S+)$', body, re.M):
        gauges[m.group(1).decode()] = float(m.group(2))
    return gauges


class Env:
    def __init__(self, public, admin):
        self.public = public
        self.admin = admin


def parse_addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def start_gateway(binary, upstream_port, workdir, history_size):
    config = os.path.join(workdir, "soak.toml")
    with open(config, "w") as f:
        f.write(f'[[channels]]\npattern = "{CHAT}"\nallow_client_publish = true\n')
    log = open(os.path.join(workdir, "gateway.log"), "wb")
    args = [
        binary,
        "--config", config,
        "--listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0",
        "--upstream", f"http://127.0.0.1:{upstream_port}",
        # Every client comes from 127.0.0.1: per-address poll rate limits
        # would measure the limiter, not the gateway.
        "--longpoll-rate-per-ip", "0",
        # Idle upstream connections go within the settle time.
        "--proxy-pool-idle-timeout", "2s",
        # Half-sent heads are cut off soon.
        "--header-read-timeout", "2s",
        "--drain-timeout", "3s",
        # History is most of the gateway's memory; it must be full before
        # the warm-up ends, or its filling looks like growth.
        "--history-size", str(history_size),
        "--log-level", "warn",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
    ready = {}

    def read_ready():
        line = proc.stdout.readline().decode()
        m = re.match(r"pollbridge ready public=(\S+) admin=(\S+)", line)
        if m:
            ready["public"], ready["admin"] = parse_addr(m.group(1)), parse_addr(m.group(2))

    t = threading.Thread(target=read_ready, daemon=True)
    t.start()
    t.join(20)
    if not ready:
        proc.kill()
        raise RuntimeError("the gateway printed no ready line")
    return proc, Env(ready["public"], ready["admin"])


def mean(xs):
    return sum(xs) / len(xs)


def run(args):
    duration, interval = args.duration, args.interval
    short = duration <= 60
    workdir = tempfile.mkdtemp(prefix="pollbridge-soak-")
    checks = []

    def check(name, ok, detail=""):
        checks.append((name, ok))
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)

    port_file = os.path.join(workdir, "upstream.port")
    upstream = subprocess.Popen([sys.executable, os.path.abspath(__file__), "upstream", "--port-file", port_file])
    procs = [upstream]
    try:
        for _ in range(100):
            if os.path.exists(port_file):
                break
            time.sleep(0.05)
        with open(port_file) as f:
            upstream_port = int(f.read())
        try:
            # At ~45 messages/s over 4 channels: full after ~4 s (short
            # runs), ~90 s with the default 1000 (the 120 s warm-up of 600 s).
            gateway, env = start_gateway(args.bin, upstream_port, workdir, 50 if short else 1000)
        except RuntimeError as e:
            check("gateway starts", False, str(e))
            return finish(checks)
        procs.append(gateway)
        pid = gateway.pid
        check("gateway starts", True, f"pid {pid}, public {env.public[1]}, admin {env.admin[1]}, upstream {upstream_port}")

        time.sleep(0.5)
        base_fds, base_rss = fd_count(pid), rss_bytes(pid)
        print(f"baseline: rss={base_rss / MiB:.1f}MiB fds={base_fds}", flush=True)

        session = 4 if short else 12
        poll_timeout = 2 if short else 5
        clients = [lambda: publisher(env, 40.0, 1), lambda: publisher(env, 10.0, 2)]
        clients += [lambda i=i: ws_subscriber(env, 10 + i, session) for i in range(8)]
        clients += [lambda: ws_commander(env, 30)]
        clients += [lambda i=i: sse_client(env, 40 + i, session) for i in range(4)]
        clients += [lambda i=i: longpoller(env, 50 + i, poll_timeout) for i in range(4)]
        clients += [lambda i=i: proxy_client(env, 60 + i) for i in range(2)]
        clients += [lambda i=i: vanisher(env, 70 + i) for i in range(2)]
        threads = [threading.Thread(target=c, daemon=True) for c in clients]
        print(f"load: {len(threads)} client threads for {duration} s; a sample every {interval} s", flush=True)
        start = time.monotonic()
        for t in threads:
            t.start()

        samples = []  # (seconds, rss, fds)
        print(f"{'t':>6} {'rss_MiB':>8} {'fds':>5}  phase", flush=True)
        next_at = start + interval
        while True:
            now = time.monotonic()
            if next_at > start + duration + 0.01:
                break
            time.sleep(max(0.0, next_at - now))
            if gateway.poll() is not None:
                break
            elapsed = round(time.monotonic() - start)
            rss, fds = rss_bytes(pid), fd_count(pid)
            samples.append((elapsed, rss, fds))
            phase = "warm-up" if elapsed <= 0.2 * duration else "load"
            print(f"{elapsed:>5}s {rss / MiB:>8.1f} {fds:>5}  {phase}", flush=True)
            next_at += interval
        STOP.set()
        for t in threads:
            t.join(5)
        load_seconds = time.monotonic() - start

        alive = gateway.poll() is None
        check("gateway alive after the load", alive, "" if alive else f"exit code {gateway.returncode}")
        if not alive:
            return finish(checks, workdir)

        # What each kind of client got through.
        c = STATS.get
        print(
            "clients: "
            + ", ".join(f"{k}={v}" for k, v in sorted(STATS.counts.items()) if not k.startswith("vanish."))
            + f" in {load_seconds:.0f} s",
            flush=True,
        )
        print("vanishing clients: " + ", ".join(f"{k[7:]}={v}" for k, v in sorted(STATS.counts.items()) if k.startswith("vanish.")), flush=True)

        def transport_check(name, kind, ops_key, extra=""):
            ops, errors, gaps = c(ops_key), c(kind + ".errors"), c(kind + ".gaps")
            ok = ops > 0 and gaps == 0 and errors <= max(1, ops // 100)
            detail = f"{ops} {ops_key.split('.')[1]}, {errors} errors, {gaps} gaps{extra}"
            if errors:
                detail += f"; first: {STATS.samples[kind][:2]}"
            check(name, ok, detail)

        transport_check("publishes accepted", "publish", "publish.ok")
        transport_check("websocket: messages in order", "websocket", "websocket.messages", f", {c('websocket.sessions')} sessions")
        transport_check("websocket: commands answered", "commands", "commands.answers")
        transport_check("sse: events in order", "sse", "sse.messages", f", {c('sse.sessions')} sessions")
        transport_check("long-poll: messages in order", "longpoll", "longpoll.messages", f", {c('longpoll.polls')} polls")
        transport_check("proxy: bodies intact", "proxy", "proxy.ok")
        vanished = sum(v for k, v in STATS.counts.items() if k.startswith("vanish.") and k != "vanish.errors")
        status, _ = http_get(env.admin, "/healthz")
        check("vanishing clients shrugged off", vanished > 0 and status == 200, f"{vanished} clients, /healthz {status}")

        # RSS: flat after warm-up.
        post = [s for s in samples if s[0] > 0.2 * duration]
        if len(post) >= 4:
            rss = [s[1] for s in post]
            lo, hi = min(rss), max(rss)
            spread_limit = max(8 * MiB, 0.2 * lo)
            check(
                "rss bounded after warm-up",
                hi - lo <= spread_limit,
                f"min {lo / MiB:.1f} MiB, max {hi / MiB:.1f} MiB, spread {(hi - lo) / MiB:.1f} MiB (limit {spread_limit / MiB:.1f})",
            )
            q = max(1, len(rss) // 4)
            first, last = mean(rss[:q]), mean(rss[-q:])
            trend_limit = max(4 * MiB, 0.1 * first)
            check(
                "rss not trending up",
                last - first <= trend_limit,
                f"first-quarter mean {first / MiB:.1f} MiB, last-quarter mean {last / MiB:.1f} MiB (limit +{trend_limit / MiB:.1f})",
            )
            fds = [s[2] for s in post]
            print(f"fds after warm-up: min {min(fds)}, max {max(fds)}", flush=True)
        else:
            check("rss bounded after warm-up", False, f"only {len(post)} samples after warm-up")

        # fds and connection gauges back to baseline once the load stops:
        # wait for the exact baseline (idle upstream connections close after
        # the 2 s pool timeout), then judge with a tolerance of 3.
        settle = 10 if short else 30
        deadline = time.monotonic() + settle
        stop_at = time.monotonic()
        while True:
            fds = fd_count(pid)
            gauges = connection_gauges(env.admin)
            open_conns = {k: v for k, v in gauges.items() if v != 0}
            if (fds <= base_fds and not open_conns) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        waited = time.monotonic() - stop_at
        print(f"after the load: rss={rss_bytes(pid) / MiB:.1f}MiB fds={fds} (baseline {base_fds}) after {waited:.1f} s", flush=True)
        check("fds back to baseline", abs(fds - base_fds) <= 3, f"{fds} open, baseline {base_fds}, after {waited:.1f} s")
        check("connection gauges back to 0", bool(gauges) and not open_conns, f"{gauges}")

        gateway.send_signal(signal.SIGTERM)
        try:
            code = gateway.wait(10)
        except subprocess.TimeoutExpired:
            gateway.kill()
            code = "none (killed after 10 s)"
        check("SIGTERM: exit code 0", code == 0, f"exit code {code}")
        with open(os.path.join(workdir, "gateway.log"), "rb") as f:
            log = f.read()
        panics = log.count(b"panicked")
        check("no panic in the gateway log", panics == 0, f"{panics} panics" if panics else "")
        failed = any(not ok for _, ok in checks)
        code = finish(checks, workdir if failed else None)
        if not failed:
            shutil.rmtree(workdir, ignore_errors=True)
        return code
    finally:
        STOP.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def finish(checks, workdir=None):
    if workdir:
        log = os.path.join(workdir, "gateway.log")
        print(f"gateway log: {log}", flush=True)
        try:
            with open(log, "rb") as f:
                tail = f.read()[-3000:].decode(errors="replace")
            print(tail, flush=True)
        except OSError:
            pass
    passed = sum(1 for _, ok in checks if ok)
    failed = len(checks) - passed
    print(f"soak: {passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and passed > 0 else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin", required=True)
    r.add_argument("--duration", type=int, default=600)
    r.add_argument("--interval", type=float, default=10)
    u = sub.add_parser("upstream")
    u.add_argument("--port-file", required=True)
    args = parser.parse_args()
    if args.mode == "upstream":
        run_upstream(args.port_file)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
