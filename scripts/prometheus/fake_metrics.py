#!/usr/bin/env python3
"""Stand-in for pollbridge's admin `GET /metrics`, for developing and self-testing
the Prometheus checks without the gateway.

Emits every metric of the contract in the text format 0.0.4 the Rust
`prometheus` crate writes (HELP + TYPE, labels sorted by name, every label
combination pre-registered). Counters and histograms grow with wall-clock
time, so consecutive scrapes differ and `rate()` is > 0.

  fake_metrics.py [--port 0] [--without-bridge] [--omit NAME]... [--duplicate] [--bad-lint]

Prints `fake_metrics listening 127.0.0.1:PORT` on stdout once bound (use
`--port 0` for a free port). Standard library only.

Fault injection for the self-test:
  --without-bridge  no pollbridge_bridge_* series (what the gateway does without a bridge route)
  --omit NAME       leave out a whole metric family (e.g. pollbridge_polls_total)
  --duplicate       emit one series twice (Prometheus would silently keep one)
  --bad-lint        emit a counter without the `_total` suffix (promtool check metrics fails)
"""
import argparse
import http.server
import socketserver
import sys
import time

TRANSPORTS = ["websocket", "longpoll", "sse", "proxy", "bridge"]
BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
           0.25, 0.5, 1, 2.5, 5, 10]

# Per-transport traffic model (per second): deliveries, payload bytes per message,
# wire overhead per message (framing or HTTP headers, both directions), client->server bytes.
MODEL = {
    #            deliveries/s  payload  overhead_out  bytes_in
    "websocket": (50.0,        120,     4,            2.0),
    "longpoll":  (20.0,        120,     260,          380.0 * 20 / 1.6),  # 1.6 messages per poll
    "sse":       (10.0,        120,     45,           0.5),
    "proxy":     (0.0,         0,       0,            900.0 * 3),         # 3 proxied requests/s
    "bridge":    (0.0,         0,       0,            0.0),
}
LATENCY_MEDIAN = {"websocket": 0.0004, "longpoll": 0.002, "sse": 0.0006, "proxy": 0.0, "bridge": 0.0}
START = time.time()


def fmt_labels(labels):
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def fmt_value(v):
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class Exposition:
    def __init__(self, args):
        self.args = args
        self.lines = []

    def family(self, name, mtype, help_text, samples):
        """samples: list of (suffix, labels, value)."""
        if name in self.args.omit:
            return
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {mtype}")
        for suffix, labels, value in samples:
            self.lines.append(f"{name}{suffix}{fmt_labels(labels)} {fmt_value(value)}")

    def histogram(self, name, help_text, series):
        """series: list of (labels, count, typical). Observations spread uniformly
        between typical/4 and typical*4: crude, but quantiles land in sensible buckets."""
        samples = []
        for labels, count, median in series:
            total = 0
            for le in BUCKETS:
                if median <= 0:
                    frac = 0.0
                else:
                    lo, hi = median / 4, median * 4
                    frac = 0.0 if le < lo else 1.0 if le >= hi else \
                        (le - lo) / (hi - lo)
                total = int(count * frac)
                samples.append(("_bucket", dict(labels, le=fmt_value(le)), total))
            samples.append(("_bucket", dict(labels, le="+Inf"), int(count)))
            samples.append(("_sum", labels, round(int(count) * median, 6)))
            samples.append(("_count", labels, int(count)))
        self.family(name, "histogram", help_text, samples)

    def text(self):
        return "\n".join(self.lines) + "\n"


def render(args):
    t = time.time() - START + 1.0
    e = Exposition(args)
    e.family("pollbridge_bus_ready", "gauge", "1 when the message bus is reachable",
             [("", {}, 1)])
    e.family("pollbridge_connections", "gauge", "Open client connections / in-flight polls",
             [("", {"transport": tr}, c) for tr, c in
              zip(TRANSPORTS, [40 + int(t) % 3, 25, 12, 2, 0])])
    wire, payload = [], []
    for tr in TRANSPORTS:
        rate, size, overhead, bytes_in = MODEL[tr]
        delivered = int(rate * t)
        out_payload = delivered * size
        out_wire = out_payload + delivered * overhead + (int(2400 * 3 * t) if tr == "proxy" else 0)
        wire += [("", {"transport": tr, "direction": "in"}, int(bytes_in * t)),
                 ("", {"transport": tr, "direction": "out"}, out_wire)]
        payload += [("", {"transport": tr, "direction": "in"}, 0),
                    ("", {"transport": tr, "direction": "out"}, out_payload)]
    e.family("pollbridge_wire_bytes_total", "counter",
             "Bytes read/written on client sockets", wire)
    e.family("pollbridge_payload_bytes_total", "counter",
             "Published payload bytes inside the wire bytes", payload)
    e.family("pollbridge_messages_published_total", "counter", "Messages accepted by the bus",
             [("", {}, int(25 * t))])
    e.family("pollbridge_messages_delivered_total", "counter", "Envelopes handed to clients",
             [("", {"transport": tr}, int(MODEL[tr][0] * t)) for tr in TRANSPORTS])
    e.histogram("pollbridge_delivery_latency_seconds",
                "Publish accepted to envelope written to the client socket",
                [({"transport": tr}, MODEL[tr][0] * t, LATENCY_MEDIAN[tr]) for tr in TRANSPORTS])
    e.family("pollbridge_polls_total", "counter", "Long-poll answers by result",
             [("", {"result": "messages"}, int(12.5 * t)),
              ("", {"result": "empty"}, int(4 * t)),
              ("", {"result": "truncated"}, int(0.1 * t))])
    e.family("pollbridge_proxy_requests_total", "counter", "Proxied requests by status class",
             [("", {"code": "1xx"}, 0), ("", {"code": "2xx"}, int(2.7 * t)),
              ("", {"code": "3xx"}, int(0.1 * t)), ("", {"code": "4xx"}, int(0.15 * t)),
              ("", {"code": "5xx"}, int(0.05 * t))])
    e.histogram("pollbridge_proxy_duration_seconds", "Upstream response time",
                [({}, 3 * t, 0.02)])
    e.family("pollbridge_dropped_total", "counter", "Messages not delivered, by reason",
             [("", {"transport": tr, "reason": "slow_consumer"},
               int(0.2 * t) if tr == "websocket" else 0) for tr in TRANSPORTS])
    if not args.without_bridge:
        e.family("pollbridge_bridge_upstream_requests_total", "counter",
                 "The gateway's own polls of the backend",
                 [("", {"bridge": "scores", "result": "changed"}, int(0.2 * t)),
                  ("", {"bridge": "scores", "result": "not_modified"}, int(0.8 * t)),
                  ("", {"bridge": "scores", "result": "error"}, 0)])
        e.family("pollbridge_bridge_client_polls_total", "counter",
                 "Legacy polls answered by the gateway",
                 [("", {"bridge": "scores", "result": "body"}, int(5 * t)),
                  ("", {"bridge": "scores", "result": "not_modified"}, int(30 * t)),
                  ("", {"bridge": "scores", "result": "held"}, int(10 * t))])
    # Migration telemetry, conflation, admission control (all pre-registered).
    routes = ["longpoll"] + ([] if args.without_bridge else ["/api/scores"])
    e.family("pollbridge_legacy_clients", "gauge",
             "Distinct polling clients seen in the telemetry window, by bridged route (or longpoll)",
             [("", {"route": r}, 140 if r == "longpoll" else 35) for r in routes])
    e.family("pollbridge_transport_fallbacks_total", "counter",
             "Browser clients that fell back from WebSocket to long-poll, by the reason they reported",
             [("", {"reason": r}, int(f * t)) for r, f in
              [("ws_error", 0.05), ("ws_timeout", 0.02), ("ws_closed_before_open", 0.01),
               ("ws_blocked", 0.0), ("other", 0.0)]])
    e.family("pollbridge_ws_upgrade_failures_total", "counter",
             "WebSocket upgrades the gateway refused, by reason",
             [("", {"reason": r}, int(f * t)) for r, f in
              [("origin", 0.01), ("auth", 0.1), ("limit", 0.0), ("bad_handshake", 0.02),
               ("disabled", 0.0)]])
    e.family("pollbridge_conflated_total", "counter",
             "Undelivered messages replaced by a newer one for a subscriber of a state channel",
             [("", {"transport": tr}, int(0.5 * t) if tr == "websocket" else 0) for tr in TRANSPORTS])
    e.family("pollbridge_admission_refused_total", "counter",
             "New WebSocket/SSE sessions refused by admission control (503 with Retry-After)",
             [("", {"transport": tr}, 0) for tr in TRANSPORTS])
    # Message bus (Redis figures; a memory bus keeps reconnects, gap fill and subscriptions at 0).
    e.histogram("pollbridge_bus_publish_duration_seconds",
                "Time for the bus to accept a publish: id assigned and message stored",
                [({}, 25 * t, 0.0008)])
    e.family("pollbridge_redis_reconnects_total", "counter",
             "Redis subscription connection re-established after a loss", [("", {}, 1)])
    e.family("pollbridge_bus_gap_fill_messages_total", "counter",
             "Messages recovered from the shared history after being missed live", [("", {}, 12)])
    e.family("pollbridge_bus_epoch_resets_total", "counter",
             "Channels started over because their epoch changed (the bus lost their data)",
             [("", {}, 0)])
    e.family("pollbridge_bus_subscriptions", "gauge",
             "Channels this node is subscribed to on the shared bus", [("", {}, 3)])
    if args.duplicate:
        e.lines.append('pollbridge_connections{transport="websocket"} 7')
    if args.bad_lint:
        e.family("pollbridge_fake_requests", "counter", "Counter without the _total suffix",
                 [("", {}, int(t))])
    return e.text()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--without-bridge", action="store_true")
    p.add_argument("--omit", action="append", default=[])
    p.add_argument("--duplicate", action="store_true")
    p.add_argument("--bad-lint", action="store_true")
    args = p.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = render(args).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    srv = Server((args.host, args.port), Handler)
    host, port = srv.server_address[:2]
    print(f"fake_metrics listening {host}:{port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
