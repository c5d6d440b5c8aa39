#!/usr/bin/env python3
"""Benchmark of the legacy polling bridge (prints figures; not a test).

1,000 legacy pollers poll the toy backend (examples/toy-backend/backend.py)
every second, each with its own keep-alive connection, for DURATION
seconds, in each mode twice — without the bridge (the gateway only proxies
the URL to the backend) and with a [[bridge]] route (interval 1s):

  snapshot:    GET /api/scores, revalidating with its ETag like a browser's
               Ajax loop; the backend changes its score every 5-6 s.
  incremental: GET /api/messages?room=bench&after=<the last id it has>
               (the first poll without a cursor), like a chat page; the
               backend gets a new message every 5-6 s.

Reported per run: backend requests per second, and the client-perceived
change latency (change made at the backend -> a poller first sees it),
p50/p99/max over all pollers and changes, and how many (poller, change)
sightings never happened.

Usage: scripts/bench/bridge.py [--pollers 1000] [--duration 30]
       [--mode snapshot|incremental|both] [--bin target/release/pollbridge]
Only the Python standard library; everything on 127.0.0.1.
"""
import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def request(reader, writer, path, headers):
    head = "GET %s HTTP/1.1\r\nHost: bench\r\n%s\r\n" % (
        path, "".join("%s: %s\r\n" % kv for kv in headers.items()))
    writer.write(head.encode())
    await writer.drain()
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length, etag = 0, None
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value.strip())
        elif name.lower() == "etag":
            etag = value.strip()
    body = await reader.readexactly(length) if length else b""
    return status, etag, body


class Snapshot:
    """The scores page: one URL, revalidated with its ETag."""
    name = "snapshot"
    stats_key = "api_scores_requests"
    route = '[[bridge]]\npath = "/api/scores"\nchannel = "scores"\ninterval = "1s"\n'

    def __init__(self):
        self.etag, self.last = None, None

    def target(self):
        return "/api/scores", ({"If-None-Match": self.etag} if self.etag else {})

    def seen(self, status, etag, body):
        """The changes (score values) this answer shows for the first time."""
        if status != 200:
            return []
        self.etag = etag or self.etag
        home = json.loads(body)["home"]
        if home == self.last:
            return []
        self.last = home
        return [home]

    @staticmethod
    async def change(port, n):
        await post(port, "/api/scores", {"home": n, "away": 0})


class Incremental:
    """The chat page: what is new after the last message id it has."""
    name = "incremental"
    stats_key = "api_messages_requests"
    route = ('[[bridge]]\npath = "/api/messages"\nchannel = "chat"\nmode = "incremental"\n'
             'cursor_param = "after"\nitems = "/messages"\nitem_id = "/id"\ninterval = "1s"\n')

    def __init__(self):
        self.after = None

    def target(self):
        if self.after is None:
            return "/api/messages?room=bench", {}
        return "/api/messages?room=bench&after=%d" % self.after, {}

    def seen(self, status, etag, body):
        if status != 200:
            return []
        messages = json.loads(body)["messages"]
        first_poll = self.after is None
        if messages:
            self.after = messages[-1]["id"]
        elif first_poll:
            self.after = 0
        # A first poll's messages were there before the poller: not changes.
        return [] if first_poll else [int(m["text"]) for m in messages]

    @staticmethod
    async def change(port, n):
        await post(port, "/api/messages?room=bench", {"text": str(n)})


async def poller(mode, port, deadline, seen_at, offset):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(offset)  # spread the pollers over the second
    state = mode()
    while time.monotonic() < deadline:
        started = time.monotonic()
        path, headers = state.target()
        status, etag, body = await request(reader, writer, path, headers)
        for change in state.seen(status, etag, body):
            seen_at.setdefault(change, []).append(time.monotonic())
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    writer.close()


async def backend_requests(port, key):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _, _, body = await request(reader, writer, "/stats", {})
    writer.close()
    return json.loads(body)[key]


async def post(port, path, payload):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps(payload).encode()
    writer.write(b"POST %s HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
    await writer.drain()
    await reader.readline()
    writer.close()


async def run(args, mode, bridged):
    backend_port, public, admin = free_port(), free_port(), free_port()
    backend = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples/toy-backend/backend.py"), str(backend_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = 'upstream = "http://127.0.0.1:%d"\n' % backend_port
    if bridged:
        config += mode.route
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config)
    gateway = subprocess.Popen([args.bin, "--config", f.name, "--listen", "127.0.0.1:%d" % public,
                                "--admin-listen", "127.0.0.1:%d" % admin, "--log-level", "warn",
                                "--max-connections-per-ip", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        gateway.stdout.readline()  # the ready line
        await asyncio.sleep(0.5)
        await mode.change(backend_port, 0)
        deadline = time.monotonic() + args.duration
        seen_at, changes = {}, {}
        tasks = [asyncio.create_task(poller(mode, public, deadline, seen_at, i / args.pollers))
                 for i in range(args.pollers)]
        await asyncio.sleep(2)  # every poller has its first copy
        before, t0 = await backend_requests(backend_port, mode.stats_key), time.monotonic()
        n = 0
        while True:
            # 5 s and a random part of a second: changes fall at different
            # points of the bridge's own 1 s polling cycle. With a plain 5 s
            # they all fell at the same point, so a run's latency carried
            # one fixed bridge delay between 0 and 1 s (p50 573 ms in one
            # run, 1204 ms in the next, same code).
            wait = 5 + random.random()
            # Every change leaves the pollers 3 s to see it.
            if time.monotonic() + wait > deadline - 3:
                break
            await asyncio.sleep(wait)
            n += 1
            changes[n] = time.monotonic()
            await mode.change(backend_port, n)
        after, t1 = await backend_requests(backend_port, mode.stats_key), time.monotonic()
        await asyncio.gather(*tasks)
        latencies = sorted(at - changes[h] for h, ats in seen_at.items() if h in changes for at in ats)
        missed = sum(args.pollers - len(seen_at.get(h, [])) for h in changes)
        pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")
        return {
            "mode": mode.name, "bridge": bridged, "pollers": args.pollers,
            "backend_requests_per_s": round((after - before) / (t1 - t0), 1),
            "changes": len(changes), "change_latency_ms": {"p50": round(pct(0.5)), "p99": round(pct(0.99)), "max": round(latencies[-1] * 1000) if latencies else None},
            "missed_change_sightings": missed,
        }
    finally:
        gateway.terminate()
        backend.terminate()
        gateway.wait()
        backend.wait()
        os.unlink(f.name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pollers", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--mode", choices=("snapshot", "incremental", "both"), default="both")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/pollbridge"))
    args = ap.parse_args()
    modes = {"snapshot": [Snapshot], "incremental": [Incremental], "both": [Snapshot, Incremental]}
    for mode in modes[args.mode]:
        for bridged in (False, True):
            result = asyncio.run(run(args, mode, bridged))
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
