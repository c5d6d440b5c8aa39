#!/usr/bin/env python3
"""Clients for scripts/deploy/e2e-nginx.sh (Python standard library only).

    e2e_client.py --proxy http://127.0.0.1:PORT --admin 127.0.0.1:A1 --admin 127.0.0.1:A2 \
                  --name nginx [--messages 100] [--hold 65] [--bridge]

Through the proxy: a WebSocket, an SSE and a long-poll client subscribe to
one channel; 100 messages are published on the nodes' admin listeners
(alternating nodes, so they cross the Redis bus), one at a time: each is
published only after the SSE client got the previous one, and must reach
the SSE client within --sse-deadline (proof that nothing buffers the
stream). All three clients must end up with the same 100 messages, in
order. In parallel, a long-poll held for longer than nginx's default 60 s
read timeout must be answered with a message published at --hold seconds,
not cut by the proxy.

Prints one line per check, "PASS name: detail" or "FAIL name: detail", and
exits 1 if any failed.
"""
import argparse
import base64
import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.parse

T0 = time.monotonic()
RESULTS = []
RESULTS_LOCK = threading.Lock()


def report(ok, name, detail):
    with RESULTS_LOCK:
        RESULTS.append(ok)
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail} [{time.monotonic() - T0:.1f} s]", flush=True)


def publish(admin, channel, data):
    host, port = admin.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps(data).encode()
    conn.request("POST", f"/publish/{channel}", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"publish on {admin} answered {resp.status}: {text[:200]!r}")
    return json.loads(text)["id"]


class WebSocket:
    """A minimal RFC 6455 client: handshake, unmasked server frames, pongs."""

    def __init__(self, host, port, path, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"closed during the handshake: {self.buf[:200]!r}")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise RuntimeError(f"handshake answered {status!r} (upgrade not forwarded?)")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _send(self, opcode, payload=b""):
        mask = os.urandom(4)
        head = bytes([0x80 | opcode])
        n = len(payload)
        head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def recv_text(self):
        """The next text message (pings answered, fragments joined)."""
        message = b""
        while True:
            b0, b1 = self._read(2)
            opcode, fin = b0 & 0x0F, b0 & 0x80
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
            payload = self._read(n)
            if opcode == 0x9:
                self._send(0xA, payload)
            elif opcode == 0x8:
                raise RuntimeError(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}")
            elif opcode in (0x1, 0x0):
                message += payload
                if fin:
                    return message.decode()

    def close(self):
        try:
            self._send(0x8, (1000).to_bytes(2, "big"))
        except OSError:
            pass
        self.sock.close()


class SseStream:
    """Reads `text/event-stream` over a raw socket, so no client-side buffer hides anything."""

    def __init__(self, host, port, path, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        self.raw = b""
        while b"\r\n\r\n" not in self.raw:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("closed before the response head")
            self.raw += chunk
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 200 " not in lines[0] + " ":
            raise RuntimeError(f"SSE answered {lines[0]!r}")
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        self.chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        self.body = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("stream closed")
        self.raw += chunk
        if not self.chunked:
            self.body, self.raw = self.body + self.raw, b""
            return
        while True:  # decode as many whole chunks as have arrived
            if b"\r\n" not in self.raw:
                return
            size_line, rest = self.raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            self.body += rest[:size]
            self.raw = rest[size + 2 :]

    def next_event(self):
        """The next event with an id, as (id, data)."""
        while True:
            while b"\n\n" not in self.body:
                self._fill()
            block, self.body = self.body.split(b"\n\n", 1)
            fields = {}
            for line in block.decode().split("\n"):
                if line.startswith(":") or ":" not in line:
                    continue
                key, value = line.split(":", 1)
                fields.setdefault(key, []).append(value[1:] if value.startswith(" ") else value)
            if "id" in fields and "data" in fields:
                return int(fields["id"][0].split("-", 1)[0]), "\n".join(fields["data"])

    def close(self):
        self.sock.close()


def long_poll(host, port, channel, since, timeout, conn=None):
    conn = conn or http.client.HTTPConnection(host, port, timeout=timeout + 30)
    conn.request("GET", f"/rt/poll/{channel}?since={since}&timeout={timeout}")
    resp = conn.getresponse()
    body = resp.read()
    return conn, resp.status, body


def fanout(args, host, port):
    """WebSocket, SSE and long-poll through the proxy get the same messages."""
    channel = f"e2e.{args.name}.{os.getpid()}"
    n = args.messages
    got = {"websocket": [], "sse": [], "longpoll": []}
    errors = {}

    def ws_reader():
        try:
            ws = WebSocket(host, port, f"/rt/ws/{channel}?since=0", timeout=30)
            while len(got["websocket"]) < n:
                msg = json.loads(ws.recv_text())
                if "id" in msg and msg.get("channel") == channel:
                    got["websocket"].append((msg["id"], msg["data"]))
            ws.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors["websocket"] = repr(e)

    def poll_reader():
        try:
            since, conn = 0, None
            while len(got["longpoll"]) < n:
                conn, status, body = long_poll(host, port, channel, since, 20, conn)
                if status != 200:
                    raise RuntimeError(f"poll answered {status}: {body[:200]!r}")
                answer = json.loads(body)
                for m in answer["messages"]:
                    got["longpoll"].append((m["id"], m["data"]))
                since = answer["last_id"]
        except Exception as e:  # noqa: BLE001
            errors["longpoll"] = repr(e)

    # SSE first, so every event can be timed from its publish.
    try:
        sse = SseStream(host, port, f"/rt/sse/{channel}?since=0", timeout=30)
    except Exception as e:  # noqa: BLE001
        report(False, f"{args.name}: sse", f"cannot open the stream: {e!r}")
        return
    threads = [threading.Thread(target=ws_reader), threading.Thread(target=poll_reader)]
    for t in threads:
        t.start()

    worst, late, total = 0.0, [], 0.0
    sse.sock.settimeout(args.sse_deadline)
    for i in range(1, n + 1):
        data = {"seq": i, "text": f"message {i}"}
        admin = args.admin[i % len(args.admin)]
        start = time.monotonic()
        try:
            publish(admin, channel, data)
            event_id, event_data = sse.next_event()
        except socket.timeout:
            late.append(i)
            errors.setdefault("sse", f"event {i} not there {args.sse_deadline * 1000:.0f} ms after its publish (buffered?)")
            break
        except Exception as e:  # noqa: BLE001
            errors.setdefault("sse", repr(e))
            break
        worst = max(worst, time.monotonic() - start)
        total += time.monotonic() - start
        envelope = json.loads(event_data)  # the SSE data is the whole envelope
        if envelope.get("id") != event_id:
            errors.setdefault("sse", f"event id {event_id} carries envelope id {envelope.get('id')}")
        got["sse"].append((event_id, envelope.get("data")))
    sse.close()
    for t in threads:
        t.join(timeout=30)

    expected = [(i, {"seq": i, "text": f"message {i}"}) for i in range(1, n + 1)]
    for transport in ("websocket", "sse", "longpoll"):
        if transport in errors:
            report(False, f"{args.name}: {transport}", f"{errors[transport]} after {len(got[transport])} messages")
        elif got[transport] != expected:
            first_bad = next((i for i, (a, b) in enumerate(zip(got[transport], expected)) if a != b), len(got[transport]))
            report(False, f"{args.name}: {transport}", f"{len(got[transport])} messages, first difference at #{first_bad + 1}")
        else:
            report(True, f"{args.name}: {transport}", f"all {n} messages, in order, same as the other transports")
    if "sse" not in errors and total / n > args.sse_mean_limit:
        errors["sse-timing"] = (
            f"events arrived on average {total / n * 1000:.0f} ms after their publish "
            f"(limit {args.sse_mean_limit * 1000:.0f} ms): something holds small writes back"
        )
    if "sse" not in errors and "sse-timing" not in errors:
        report(
            True,
            f"{args.name}: sse unbuffered",
            f"each of {n} events arrived before the next publish, mean {total / n * 1000:.0f} ms, worst {worst * 1000:.0f} ms after its publish (limits {args.sse_deadline * 1000:.0f} ms each, {args.sse_mean_limit * 1000:.0f} ms mean)",
        )
    else:
        report(False, f"{args.name}: sse unbuffered", errors.get("sse") or errors["sse-timing"])


def held_poll(args, host, port):
    """A long-poll held past nginx's default 60 s proxy_read_timeout."""
    channel = f"e2e.{args.name}.hold.{os.getpid()}"
    timeout = args.hold + 25
    result = {}

    def poll():
        start = time.monotonic()
        try:
            _, status, body = long_poll(host, port, channel, 0, timeout)
            result.update(status=status, body=body, elapsed=time.monotonic() - start)
        except Exception as e:  # noqa: BLE001
            result.update(error=repr(e), elapsed=time.monotonic() - start)

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(args.hold)
    try:
        publish(args.admin[0], channel, {"held": True})
    except Exception as e:  # noqa: BLE001
        result.setdefault("error", f"publish failed: {e!r}")
    t.join(timeout=timeout + 30)
    name = f"{args.name}: long-poll held {args.hold:.0f} s"
    if "error" in result:
        report(False, name, f"{result['error']} after {result['elapsed']:.1f} s")
        return
    ok = False
    if result["status"] == 200:
        messages = json.loads(result["body"]).get("messages", [])
        ok = [m.get("data") for m in messages] == [{"held": True}]
    detail = f"answered {result['status']} after {result['elapsed']:.1f} s"
    if not ok:
        detail += f": {result['body'][:200]!r}"
    report(ok and result["elapsed"] >= args.hold, name, detail + (" with the message published then" if ok else ""))


def bridged(args, host, port):
    """The legacy polling URL, through the proxy, answered by the gateway's
    bridge: 200 with the gateway's ETag; then a poll with that ETag is held
    (`hold`) and answered with the new body once the backend changes."""
    name = f"{args.name}: bridged /api/scores"
    try:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/api/scores")
        resp = conn.getresponse()
        body = resp.read()
        etag = resp.getheader("ETag") or ""
        if resp.status != 200 or not etag.startswith('"pb-'):
            report(False, name, f"answered {resp.status}, ETag {etag!r}: {body[:200]!r}")
            return
        scores = {"home": os.getpid() % 100, "away": len(args.name)}

        def change():
            time.sleep(1)
            b = http.client.HTTPConnection(*args.backend.rsplit(":", 1), timeout=10)
            b.request("POST", "/api/scores", json.dumps(scores), {"Content-Type": "application/json"})
            b.getresponse().read()

        threading.Thread(target=change).start()
        start = time.monotonic()
        conn.request("GET", "/api/scores?_=1", headers={"If-None-Match": etag})
        again = conn.getresponse()
        new_body = again.read()
        elapsed = time.monotonic() - start
        # Both proxies' clients change the same backend at about the same
        # time: whichever change lands first answers both held polls.
        ok = again.status == 200 and json.loads(new_body) != json.loads(body) and again.getheader("ETag") != etag
        report(
            ok,
            name,
            f"200 with ETag {etag}; the poll with it was held and answered {again.status} "
            f"{new_body[:80]!r} {elapsed:.1f} s later, after the backend changed",
        )
    except Exception as e:  # noqa: BLE001
        report(False, name, repr(e))


def main():
    parser = argparse.ArgumentParser(description="pollbridge clients through a proxy")
    parser.add_argument("--proxy", required=True, help="http://HOST:PORT of nginx or HAProxy")
    parser.add_argument("--admin", action="append", required=True, help="a node's admin HOST:PORT")
    parser.add_argument("--name", required=True)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--sse-deadline", type=float, default=0.5, help="seconds, per event")
    parser.add_argument("--sse-mean-limit", type=float, default=0.1, help="seconds, mean over all events")
    parser.add_argument("--hold", type=float, default=65.0, help="seconds (0: skip the held poll)")
    parser.add_argument("--bridge", action="store_true", help="also check the bridged /api/scores")
    parser.add_argument("--backend", help="the toy backend's HOST:PORT (with --bridge)")
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.proxy)
    host, port = url.hostname, url.port

    threads = [threading.Thread(target=fanout, args=(args, host, port))]
    if args.hold > 0:
        threads.append(threading.Thread(target=held_poll, args=(args, host, port)))
    if args.bridge:
        threads.append(threading.Thread(target=bridged, args=(args, host, port)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0 if RESULTS and all(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
