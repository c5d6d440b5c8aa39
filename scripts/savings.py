#!/usr/bin/env python3
"""Measures what each transport costs per delivered message, on a running
gateway, and prints the gateway's own byte-exact figures (/stats).

One WebSocket, one SSE and one long-poll client (the long-poll client sends
the headers a browser would: user agent, accept, language, a session cookie)
subscribe to one channel; N messages with a 100-byte payload are published
through the admin API, paced like a live feed; then /stats is printed.

Usage: scripts/savings.py PUBLIC_ADDR ADMIN_ADDR [N]   (e.g. 127.0.0.1:8080 127.0.0.1:9090 200)
Only the Python standard library.
"""
import base64
import http.client
import json
import os
import socket
import sys
import threading
import time

BROWSER_HEADERS = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Accept": "application/json, text/javascript, */*; q=0.01",
    "Accept-Language": "en-US,en;q=0.9",
    "Accept-Encoding": "gzip, deflate",
    "X-Requested-With": "XMLHttpRequest",
    "Referer": "http://example.test/scores",
    "Cookie": "session=6f1c2a9e8b7d4c3f2a1b0c9d8e7f6a5b; theme=light",
}


def hostport(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def websocket_reader(addr, channel, n, got):
    s = socket.create_connection(hostport(addr))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /rt/ws/%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (channel, addr, key)).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    buf = buf.split(b"\r\n\r\n", 1)[1]
    envelopes = 0
    while envelopes < n:
        while len(buf) < 2:
            buf += s.recv(65536)
        length = buf[1] & 0x7F
        head = 2
        if length == 126:
            while len(buf) < 4:
                buf += s.recv(65536)
            length = int.from_bytes(buf[2:4], "big")
            head = 4
        while len(buf) < head + length:
            buf += s.recv(65536)
        payload, buf = buf[head:head + length], buf[head + length:]
        if not payload.startswith(b'{"type"'):
            envelopes += 1
    got["websocket"] = envelopes
    s.sendall(bytes([0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE8 ^ 2]))  # masked close 1000
    s.close()


def sse_reader(addr, channel, n, got):
    s = socket.create_connection(hostport(addr))
    s.sendall(("GET /rt/sse/%s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n" % (channel, addr)).encode())
    buf = b""
    while buf.count(b"\nid: ") + buf.startswith(b"id: ") < n:
        data = s.recv(65536)
        if not data:
            break
        buf += data
    got["sse"] = buf.count(b"\nid: ")
    s.close()


def longpoll_reader(addr, channel, n, got):
    conn = http.client.HTTPConnection(*hostport(addr))
    conn.request("GET", "/rt/poll/%s?timeout=0" % channel, headers=BROWSER_HEADERS)
    since = json.loads(conn.getresponse().read())["last_id"]
    received = 0
    while received < n:
        conn.request("GET", "/rt/poll/%s?since=%d&timeout=25" % (channel, since), headers=BROWSER_HEADERS)
        answer = json.loads(conn.getresponse().read())
        received += len(answer["messages"])
        since = answer["last_id"]
    got["longpoll"] = received
    conn.close()


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    public, admin = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    channel = "savings%d" % os.getpid()
    got = {}
    readers = [threading.Thread(target=f, args=(public, channel, n, got))
               for f in (websocket_reader, sse_reader, longpoll_reader)]
    for t in readers:
        t.start()
    time.sleep(0.5)
    pub = http.client.HTTPConnection(*hostport(admin))
    for i in range(n):
        payload = json.dumps({"i": i, "pad": ""}, separators=(",", ":"))
        payload = json.dumps({"i": i, "pad": "x" * (100 - len(payload))}, separators=(",", ":"))
        assert len(payload) == 100
        pub.request("POST", "/publish/" + channel, body=payload, headers={"Content-Type": "application/json"})
        pub.getresponse().read()
        time.sleep(0.02)
    for t in readers:
        t.join(timeout=30)
    time.sleep(0.5)  # the gateway counts a delivery once its write returned
    pub.request("GET", "/stats")
    stats = json.loads(pub.getresponse().read())
    print("received: %s of %d each" % (got, n))
    print("%-10s %10s %14s %16s %12s" % ("transport", "delivered", "wire B/msg", "overhead B/msg", "header share"))
    for name in ("websocket", "sse", "longpoll"):
        t = stats["transports"][name]
        print("%-10s %10d %14.1f %16.1f %11.1f%%" % (name, t["delivered"], t["wire_bytes_per_delivery"] or 0,
              t["overhead_bytes_per_delivery"] or 0, 100 * (t["header_share"] or 0)))
    sv = stats.get("longpoll_to_websocket") or {}
    if sv.get("saved_bytes_per_message") is not None:
        print("long-poll -> WebSocket: %.1f -> %.1f B/msg on open connections (saves %.1f B/msg, %.0f B/s);"
              " one-off handshake %.0f B, repaid after %s messages"
              % (sv["longpoll_bytes_per_message"], sv["websocket_bytes_per_message"], sv["saved_bytes_per_message"],
                 sv["saved_bytes_per_second"] or 0, sv["websocket_handshake_bytes"] or 0,
                 "%.1f" % sv["handshake_repaid_after_messages"] if sv.get("handshake_repaid_after_messages") else "-"))
    ok = all(got.get(k) == n for k in ("websocket", "sse", "longpoll"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
