#!/usr/bin/env python3
"""Wire bytes and server CPU per delivery with and without gzip/brotli
(prints figures; not a test). docs/http.md describes the compression.

A realistic state message: an order book snapshot of ~2.5 KB of JSON
(40 price levels a side, prices and sizes moving a little per message).
Every phase starts a fresh gateway, connects --clients clients that send
the phase's Accept-Encoding, publishes --messages messages at --rate per
second on the admin listener, waits until every client has had every
message, and reads from the gateway itself:

  wire bytes per delivery  (pollbridge_wire_bytes_total in + out) ÷
                           pollbridge_messages_delivered_total, per transport
  CPU per delivery         the gateway's utime + stime over the publish
                           phase (/proc/PID/stat) ÷ deliveries
  compression ratio        pollbridge_compression_bytes_total after ÷ before

Phases: sse × {identity, gzip, br}, longpoll × {identity, gzip, br},
longpoll-catchup × {identity, gzip, br} (the messages are published first;
each client then polls the whole history from since=0 --catchup-rounds
times: every answer holds all of them, far over 16 KiB, so it is streamed,
and compressed it is stitched from the messages' shared pieces), bridge ×
{identity, gzip, br} (legacy pollers revalidating a bridged URL with their
ETag every 100 ms against a backend whose book changes every 250 ms; the
bridge's wire bytes include the 304s, which is what those pollers cost).
All phases in one run, so the ratios are same-run ratios; with --repeat N
the phases run N times, interleaved, and each figure is the median (the
CPU figure's spread, min–max, follows it).

Usage: scripts/bench/compression.py [--bin target/release/pollbridge]
       [--clients 200] [--messages 100] [--rate 20] [--repeat 3]
       [--catchup-rounds 5] [--only sse,longpoll-catchup]
Only the Python standard library; everything on 127.0.0.1.
"""
import argparse
import asyncio
import http.server
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def order_book(seq, rng):
    """~2.5 KB: 40 levels a side around a drifting mid price."""
    mid = 40000 + 25 * ((seq * 7919) % 40)

    def side(sign):
        return [
            [round(mid + sign * (0.5 + i * 0.5), 2), round(rng.uniform(0.01, 3.0), 4), rng.randint(1, 12)]
            for i in range(40)
        ]

    return {"symbol": "BTC-EUR", "seq": seq, "ts": 1733500000000 + seq * 50,
            "bids": side(-1), "asks": side(1)}


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def metrics(admin):
    with socket.create_connection(admin) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {admin[0]}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    out = {}
    for line in data.decode().splitlines():
        m = re.match(r"(pollbridge_(?:wire_bytes_total|messages_delivered_total|compression_bytes_total))\{([^}]*)\} (\S+)", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out[(m.group(1), labels.get("transport"), labels.get("direction") or labels.get("stage"))] = float(m.group(3))
    return out


class Gateway:
    def __init__(self, binary, config):
        self.public = ("127.0.0.1", free_port())
        self.admin = ("127.0.0.1", free_port())
        self.dir = tempfile.TemporaryDirectory()
        path = os.path.join(self.dir.name, "pollbridge.toml")
        with open(path, "w") as f:
            f.write(config)
        self.proc = subprocess.Popen(
            [binary, "--config", path, "--listen", "%s:%d" % self.public,
             "--admin-listen", "%s:%d" % self.admin, "--log-level", "warn",
             "--max-connections-per-ip", "0", "--longpoll-rate-per-ip", "0",
             "--history-size", "2000"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir.name, "log"), "w"))
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(self.admin, timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("gateway did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


async def publish(admin, channel, body):
    r, w = await asyncio.open_connection(*admin)
    w.write((f"POST /publish/{channel} HTTP/1.1\r\nHost: {admin[0]}:{admin[1]}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    await w.drain()
    answer = await r.read()
    w.close()
    if b" 200 " not in answer.split(b"\r\n", 1)[0]:
        raise SystemExit(f"publish failed: {answer[:300]!r}")


async def read_response(r):
    head = await r.readuntil(b"\r\n\r\n")
    r.last_head = head.decode("latin-1")
    text = r.last_head.lower()
    if "transfer-encoding: chunked" in text:
        body = b""
        while True:
            size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await r.readexactly(size)
            await r.readexactly(2)
            if size == 0:
                break
    else:
        length = int(re.search(r"content-length: (\d+)", text).group(1)) if "content-length" in text else 0
        body = await r.readexactly(length)
    status = int(text.split()[1])
    return status, text, body


def decode(text, body):
    if "content-encoding: gzip" in text:
        return zlib.decompress(body, 31)
    return body


async def sse_client(addr, accept, stop):
    r, w = await asyncio.open_connection(*addr)
    extra = f"Accept-Encoding: {accept}\r\n" if accept else ""
    w.write(f"GET /rt/sse/book HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n".encode())
    await w.drain()
    while not stop.is_set():
        try:
            if not await asyncio.wait_for(r.read(65536), 0.5):
                break
        except asyncio.TimeoutError:
            pass
    w.close()


async def poll_client(addr, accept, stop):
    r, w = await asyncio.open_connection(*addr)
    extra = f"Accept-Encoding: {accept}\r\n" if accept else ""
    since = 0
    while not stop.is_set():
        w.write(f"GET /rt/poll/book?since={since}&timeout=2 HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        await w.drain()
        _, text, body = await read_response(r)
        if "content-encoding: br" in text:
            since += 1  # no brotli in the standard library: one message per poll
        else:
            since = json.loads(decode(text, body))["last_id"]
    w.close()


async def catchup_client(addr, accept, rounds, want_messages):
    """Polls the whole history from since=0 `rounds` times."""
    r, w = await asyncio.open_connection(*addr)
    extra = f"Accept-Encoding: {accept}\r\n" if accept else ""
    for _ in range(rounds):
        w.write(f"GET /rt/poll/book?since=0&timeout=0 HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        await w.drain()
        status, text, body = await read_response(r)
        if status != 200:
            raise SystemExit(f"catch-up poll: {status}")
        if "content-encoding: br" not in text:
            got = len(json.loads(decode(text, body))["messages"])
            if got != want_messages:
                raise SystemExit(f"catch-up answer had {got} of {want_messages} messages")
    w.close()


async def bridge_client(addr, accept, stop):
    r, w = await asyncio.open_connection(*addr)
    extra = f"Accept-Encoding: {accept}\r\n" if accept else ""
    etag = None
    while not stop.is_set():
        cond = f"If-None-Match: {etag}\r\n" if etag else ""
        w.write(f"GET /api/book HTTP/1.1\r\nHost: x\r\n{extra}{cond}\r\n".encode())
        await w.drain()
        status, text, _ = await read_response(r)
        m = re.search(r"etag: (\S+)", text)
        # The ETag as sent (`text` is lower-cased; `W/` must stay upper).
        m = m and re.search(r"(?i)etag: (\S+)", r.last_head)
        if m:
            etag = m.group(1)
        await asyncio.sleep(0.1)
    w.close()


def start_backend(rng):
    """A backend whose book changes every 250 ms."""
    start = time.time()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seq = int((time.time() - start) / 0.25)
            body = json.dumps(order_book(seq, random.Random(seq)), separators=(",", ":")).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def phase(args, transport, accept, books):
    backend = None
    config = ""
    if transport == "bridge":
        backend = start_backend(random.Random(1))
        config = (f'upstream = "http://127.0.0.1:{backend.server_address[1]}"\n\n'
                  '[[bridge]]\npath = "/api/book"\nchannel = "book"\ninterval = "250ms"\n')
    gw = Gateway(args.bin, config)
    stop = asyncio.Event()
    if transport == "longpoll-catchup":
        for body in books:
            await publish(gw.admin, "book", body)
        before, cpu0, t0 = metrics(gw.admin), cpu_seconds(gw.proc.pid), time.time()
        await asyncio.gather(*[catchup_client(gw.public, accept, args.catchup_rounds, len(books))
                               for _ in range(args.clients)])
        after, cpu1, t1 = metrics(gw.admin), cpu_seconds(gw.proc.pid), time.time()
        gw.stop()
        return summary("longpoll", transport, accept, before, after, cpu1 - cpu0, t1 - t0)
    client = {"sse": sse_client, "longpoll": poll_client, "bridge": bridge_client}[transport]
    tasks = [asyncio.create_task(client(gw.public, accept, stop)) for _ in range(args.clients)]
    await asyncio.sleep(1.0)
    before, cpu0, t0 = metrics(gw.admin), cpu_seconds(gw.proc.pid), time.time()
    if transport == "bridge":
        await asyncio.sleep(args.messages / args.rate)
    else:
        for body in books:
            await publish(gw.admin, "book", body)
            await asyncio.sleep(1 / args.rate)
        want = args.clients * len(books)
        deadline = time.time() + 20
        while time.time() < deadline:
            got = metrics(gw.admin).get(("pollbridge_messages_delivered_total", transport, None), 0) \
                - before.get(("pollbridge_messages_delivered_total", transport, None), 0)
            if got >= want:
                break
            await asyncio.sleep(0.2)
    after, cpu1, t1 = metrics(gw.admin), cpu_seconds(gw.proc.pid), time.time()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    gw.stop()
    if backend:
        backend.shutdown()
    return summary(transport, transport, accept, before, after, cpu1 - cpu0, t1 - t0)


def summary(label, name, accept, before, after, cpu, seconds):
    """A phase's figures from the counters of transport `label`."""
    def delta(metric, d=None):
        key = (metric, label, d)
        return after.get(key, 0) - before.get(key, 0)

    delivered = delta("pollbridge_messages_delivered_total")
    wire = delta("pollbridge_wire_bytes_total", "in") + delta("pollbridge_wire_bytes_total", "out")
    cb, ca = delta("pollbridge_compression_bytes_total", "before"), delta("pollbridge_compression_bytes_total", "after")
    return {
        "transport": name, "accept": accept or "(none)", "deliveries": int(delivered),
        "wire_per_delivery": wire / delivered if delivered else float("nan"),
        "cpu_us_per_delivery": cpu * 1e6 / delivered if delivered else float("nan"),
        "ratio": ca / cb if cb else None, "seconds": seconds,
    }


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/pollbridge"))
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--messages", type=int, default=100)
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--catchup-rounds", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated transports to run (default: all)")
    args = ap.parse_args()
    rng = random.Random(7)
    books = [json.dumps(order_book(i, rng), separators=(",", ":")).encode() for i in range(args.messages)]
    print(f"message: {sum(map(len, books)) / len(books):.0f} bytes of JSON on average; "
          f"{args.clients} clients, {args.messages} messages at {args.rate}/s", file=sys.stderr)
    plan = [(t, a) for t, codings in [("sse", [None, "gzip", "br"]), ("longpoll", [None, "gzip", "br"]),
                                      ("longpoll-catchup", [None, "gzip", "br"]),
                                      ("bridge", [None, "gzip", "br"])]
            for a in codings if not args.only or t in args.only.split(",")]
    runs = {key: [] for key in plan}
    for _ in range(args.repeat):
        for transport, accept in plan:
            row = await phase(args, transport, accept, books)
            runs[(transport, accept)].append(row)
            print(json.dumps(row), file=sys.stderr)

    def median(rows, field):
        values = sorted(r[field] for r in rows)
        return values[len(values) // 2]

    print("| transport | Accept-Encoding | deliveries | wire bytes / delivery | compressed ÷ plain | gateway CPU µs / delivery (min–max) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (transport, accept), rows in runs.items():
        ratio = f"{median(rows, 'ratio'):.3f}" if rows[0]["ratio"] is not None else "—"
        cpu = [r["cpu_us_per_delivery"] for r in rows]
        print(f"| {transport} | {accept or '(none)'} | {median(rows, 'deliveries')} | "
              f"{median(rows, 'wire_per_delivery'):.0f} | {ratio} | "
              f"{median(rows, 'cpu_us_per_delivery'):.1f} ({min(cpu):.1f}–{max(cpu):.1f}) |")


if __name__ == "__main__":
    asyncio.run(main())
