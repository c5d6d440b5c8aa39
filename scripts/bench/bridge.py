#!/usr/bin/env python3
"""Benchmark of the legacy polling bridge (prints figures; not a test).

1,000 legacy pollers poll GET /api/scores every second (each with its own
keep-alive connection and ETag, like a browser's Ajax loop) for DURATION
seconds, twice:

  without the bridge: the gateway only proxies /api/scores to the backend;
  with the bridge:    a [[bridge]] route (interval 1s) answers them.

The backend (examples/toy-backend/backend.py) changes its score every 5 s.
Reported per run: backend requests per second, and the client-perceived
change latency (change made at the backend → a poller first sees it),
p50/p99/max over all pollers and changes.

Usage: scripts/bench/bridge.py [--pollers 1000] [--duration 30] [--bin target/release/pollbridge]
Only the Python standard library; everything on 127.0.0.1.
"""
import argparse
import asyncio
import json
import os
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


async def poller(port, deadline, changes, seen_at, offset):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(offset)  # spread the pollers over the second
    etag, last = None, None
    while time.monotonic() < deadline:
        started = time.monotonic()
        headers = {"If-None-Match": etag} if etag else {}
        status, new_etag, body = await request(reader, writer, "/api/scores", headers)
        if status == 200:
            etag = new_etag or etag
            home = json.loads(body)["home"]
            if home != last:
                last = home
                seen_at.setdefault(home, []).append(time.monotonic())
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    writer.close()


async def backend_requests(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _, _, body = await request(reader, writer, "/stats", {})
    writer.close()
    return json.loads(body)["api_scores_requests"]


async def set_score(port, home):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"home": home, "away": 0}).encode()
    writer.write(b"POST /api/scores HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    await reader.readline()
    writer.close()


async def run(args, bridged):
    backend_port, public, admin = free_port(), free_port(), free_port()
    backend = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples/toy-backend/backend.py"), str(backend_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = 'upstream = "http://127.0.0.1:%d"\n' % backend_port
    if bridged:
        config += '[[bridge]]\npath = "/api/scores"\nchannel = "scores"\ninterval = "1s"\n'
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config)
    gateway = subprocess.Popen([args.bin, "--config", f.name, "--listen", "127.0.0.1:%d" % public,
                                "--admin-listen", "127.0.0.1:%d" % admin, "--log-level", "warn",
                                "--max-connections-per-ip", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        gateway.stdout.readline()  # the ready line
        await asyncio.sleep(0.5)
        await set_score(backend_port, 0)
        deadline = time.monotonic() + args.duration
        seen_at, changes = {}, {}
        tasks = [asyncio.create_task(poller(public, deadline, changes, seen_at, i / args.pollers))
                 for i in range(args.pollers)]
        await asyncio.sleep(2)  # every poller has its first copy
        before, t0 = await backend_requests(backend_port), time.monotonic()
        home = 0
        while time.monotonic() < deadline - 3:
            await asyncio.sleep(5)
            home += 1
            changes[home] = time.monotonic()
            await set_score(backend_port, home)
        after, t1 = await backend_requests(backend_port), time.monotonic()
        await asyncio.gather(*tasks)
        latencies = sorted(at - changes[h] for h, ats in seen_at.items() if h in changes for at in ats)
        missed = sum(args.pollers - len(seen_at.get(h, [])) for h in changes)
        pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")
        return {
            "bridge": bridged, "pollers": args.pollers,
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
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/pollbridge"))
    args = ap.parse_args()
    for bridged in (False, True):
        result = asyncio.run(run(args, bridged))
        print(json.dumps(result))


if __name__ == "__main__":
    main()
