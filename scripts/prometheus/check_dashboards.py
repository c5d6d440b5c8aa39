#!/usr/bin/env python3
"""Evaluate every PromQL expression of Grafana dashboards and of the loaded
Prometheus rules against a live Prometheus (standard library only).

  check_dashboards.py --prom URL [--job pollbridge] [--var job=pollbridge]
                      [--allow-no-data NAME]... [--rules] DASHBOARD.json...
  check_dashboards.py --list DASHBOARD.json...        # substituted exprs, offline
  check_dashboards.py --offline DASHBOARD.json...     # only: does every variable resolve?
  check_dashboards.py --prom URL --wait-only          # just wait for samples

Before checking it waits (polling, no fixed sleeps) until Prometheus is ready
and has stored --min-samples scrapes of job --job with `up == 1`, and, with
--rules, until every rule group has been evaluated after that. It fails if
Prometheus' own counters show out-of-order / duplicate / out-of-bounds samples,
exceeded sample or body limits, or failed rule evaluations.

What is checked:
- dashboards: every `panels[].targets[].expr` (also collapsed rows'
  `panels[].panels[]`, legacy `rows[].panels[]`, the `{"dashboard": ...}`
  wrapper) and every query variable (`label_values(expr, label)`,
  `label_values(label)`, `query_result(expr)`, `metrics(regex)`); targets
  whose datasource type is known and not prometheus are skipped;
- with --rules, every rule Prometheus loaded (/api/v1/rules): health ok;
  recording rules: the expr returns data and the recorded series exists;
  alerting rules: the expr parses and executes (no data needed).

Template variables are substituted as Grafana would, roughly:
- $__rate_interval, $__interval, $__range, and any variable of type interval -> 1m;
  $__interval_ms / $__range_ms -> 60000, $__range_s -> 60;
- a variable given with --var NAME=VALUE takes that value (regex-escaped in a
  `=~` / `!~` matcher);
- otherwise, inside a quoted label matcher `=`/`=~` it becomes `.*` (and `=` becomes `=~`),
  inside `!=`/`!~` it becomes `__grafana_var__` (excludes nothing);
- otherwise, outside quotes it takes the variable's `current` value.
All forms: $v, ${v}, ${v:fmt}, [[v]], [[v:fmt]].

Verdict per expression:
  OK, PARSE_ERROR (HTTP 400 bad_data), EXEC_ERROR (e.g. many-to-many),
  NO_DATA (empty result), NAN_OR_INF (a sample is NaN or +-Inf: an unguarded
  division or a histogram without observations), UNKNOWN_METRIC (references a
  metric name Prometheus never saw), ALLOWED_NO_DATA (no data, and every
  missing name is on the --allow-no-data list), UNRESOLVED_VAR, ERROR.
NO_DATA and NAN_OR_INF are re-queried until --settle-timeout (rates need two
scrapes with traffic in between); the rest are final. Exit 1 on any problem.
"""
import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime

RANGE_VALUE = "1m"
BUILTINS = {
    "__rate_interval": RANGE_VALUE, "__interval": RANGE_VALUE, "__range": RANGE_VALUE,
    "__interval_ms": "60000", "__range_ms": "60000", "__range_s": "60",
}
NEG_PLACEHOLDER = "__grafana_var__"
VAR_RE = re.compile(r"\$\{([A-Za-z_]\w*)(?::([^}]*))?\}|\[\[([A-Za-z_]\w*)(?::([^\]]*))?\]\]|\$([A-Za-z_]\w*)")
NON_PROM_DS = {"loki", "__expr__", "elasticsearch", "influxdb", "graphite", "tempo", "jaeger",
               "grafana", "datasource", "-- Grafana --", "-- Dashboard --", "-- Mixed --",
               "testdata", "grafana-testdata-datasource", "mysql", "postgres", "cloudwatch"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "atan2", "start", "end", "sum", "min", "max", "avg",
    "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
}


# --------------------------------------------------------------------------- substitution

class Unresolved(Exception):
    pass


def regex_escape(value):
    # Escape for a Prometheus (RE2) regex inside a double-quoted PromQL string.
    return "".join("\\\\" + c if c in r".+*?()|[]{}^$\\" else c for c in value)


def var_value(name, variables, overrides, context):
    """Value of one variable reference -> (text, became_wildcard).

    context: None outside quotes; inside a string the matcher op before it
    ("=", "=~", "!=", "!~") or "arg" (a string that is not a matcher value)."""
    if name in BUILTINS:
        return BUILTINS[name], False
    v = variables.get(name)
    if v is not None and v.get("type") == "interval":
        return RANGE_VALUE, False
    if context in ("!=", "!~"):
        return NEG_PLACEHOLDER, False
    if name in overrides:
        val = overrides[name]
        return (regex_escape(val) if context == "=~" else val), False
    if context in ("=", "=~"):
        return ".*", True
    cur = (v or {}).get("current") or {}
    val = cur.get("value")
    if isinstance(val, list):
        val = val[0] if val else None
    if val == "$__all" and (v or {}).get("allValue"):
        val = v["allValue"]
    if val in (None, "", "$__all") and (v or {}).get("type") == "constant":
        val = v.get("query")
    if isinstance(val, str) and val not in ("", "$__all"):
        return val, False
    if context == "arg":
        return ".*", True
    raise Unresolved(name)


def substitute(expr, variables, overrides):
    """Replace template variables; see the module doc. Raises Unresolved."""

    def sub_vars(text, context):
        wild = []

        def rep(m):
            value, w = var_value(m.group(1) or m.group(3) or m.group(5), variables, overrides, context)
            wild.append(w)
            return value
        return VAR_RE.sub(rep, text), any(wild)

    out, i, n, plain_start = "", 0, len(expr), 0
    while i < n:
        c = expr[i]
        if c not in "\"'`":
            i += 1
            continue
        out += sub_vars(expr[plain_start:i], None)[0]
        j = i + 1
        while j < n and expr[j] != c:
            j += 2 if (expr[j] == "\\" and c != "`") else 1
        stripped = out.rstrip()
        op = next((o for o in ("=~", "!~", "!=", "=") if stripped.endswith(o)), None)
        body, wild = sub_vars(expr[i + 1:j], op or "arg")
        if op == "=" and wild:
            # The variable became a regex: make the matcher a regex matcher.
            out = stripped[:-1] + "=~" + out[len(stripped):]
        out += c + body + c
        i = plain_start = j + 1
    return out + sub_vars(expr[plain_start:], None)[0]


# --------------------------------------------------------------------------- metric names

def metric_names(expr):
    """Metric names referenced by a PromQL expression (best effort, no parser)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    # {__name__="x"} / {__name__=~"x|y"} selectors are rare; names inside braces are labels.
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\[\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


# --------------------------------------------------------------------------- dashboards

def load_dashboard(path):
    with open(path) as f:
        d = json.load(f)
    if isinstance(d, dict) and isinstance(d.get("dashboard"), dict):
        d = d["dashboard"]
    return d


def ds_type(ds):
    if isinstance(ds, dict):
        t = ds.get("type")
        uid = ds.get("uid")
        if t:
            return t
        if uid in NON_PROM_DS:
            return uid
        return None
    if isinstance(ds, str):
        return ds if ds in NON_PROM_DS else None
    return None


def dashboard_items(path):
    """Yield (where, raw_expr, kind, extra) for every PromQL query of a dashboard."""
    d = load_dashboard(path)
    variables = {v.get("name"): v for v in (d.get("templating", {}) or {}).get("list", []) or []}
    name = path.rsplit("/", 1)[-1]

    def panels():
        for p in d.get("panels", []) or []:
            yield p
            for q in p.get("panels", []) or []:
                yield q
        for r in d.get("rows", []) or []:
            for q in r.get("panels", []) or []:
                yield q

    items = []
    for p in panels():
        if p.get("type") == "row":
            continue
        pds = ds_type(p.get("datasource"))
        for t in p.get("targets", []) or []:
            tds = ds_type(t.get("datasource")) or pds
            if tds and tds != "prometheus":
                continue
            expr = t.get("expr")
            if not expr:
                continue
            where = f"{name} › {p.get('title', '?')} [{t.get('refId', '?')}]"
            items.append((where, expr, "panel", None))
    for v in variables.values():
        if v.get("type") != "query":
            continue
        if ds_type(v.get("datasource")) not in (None, "prometheus"):
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if not isinstance(q, str) or not q.strip():
            continue
        where = f"{name} › variable ${v.get('name')}"
        q = q.strip()
        m = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_]\w*)\s*\)", q, re.S)
        if m:
            items.append((where, m.group(1), "label_values", m.group(2)))
            continue
        m = re.fullmatch(r"label_values\(\s*([A-Za-z_]\w*)\s*\)", q)
        if m:
            items.append((where, None, "label_name", m.group(1)))
            continue
        m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
        if m:
            items.append((where, m.group(1), "panel", None))
            continue
        m = re.fullmatch(r"metrics\((.*)\)", q, re.S)
        if m:
            items.append((where, None, "metrics", m.group(1).strip()))
            continue
        items.append((where, q, "panel", None))  # plain PromQL (newer editors)
    return items, variables


# --------------------------------------------------------------------------- Prometheus API

class Prom:
    def __init__(self, base):
        self.base = base.rstrip("/")

    def get(self, path, params=None, timeout=10):
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, OSError) as e:  # not listening yet, reset, timeout
            return 0, str(e)

    def api(self, path, params=None):
        status, body = self.get(path, params)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"status": "error", "errorType": "http", "error": body[:300]}

    def query(self, expr):
        return self.api("/api/v1/query", {"query": expr})

    def names(self):
        _, r = self.api("/api/v1/label/__name__/values")
        return set(r.get("data") or [])

    def value(self, expr, default=None):
        status, r = self.query(expr)
        res = (r.get("data") or {}).get("result") or []
        if status != 200 or not res:
            return default
        return float(res[0]["value"][1])


def classify(prom, expr, known, allow):
    """Return (verdict, detail)."""
    unknown = sorted(n for n in metric_names(expr) if n not in known)
    bad_unknown = [n for n in unknown if n not in allow]
    status, r = prom.query(expr)
    if status == 400 or r.get("errorType") == "bad_data":
        return "PARSE_ERROR", r.get("error", "")
    if status == 422 or r.get("errorType") == "execution":
        return "EXEC_ERROR", r.get("error", "")
    if r.get("status") != "success":
        return "ERROR", f"HTTP {status} {r.get('errorType', '')}: {r.get('error', '')}"
    data = r.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar":
        result = [{"metric": {}, "value": result}]
    if bad_unknown:
        return "UNKNOWN_METRIC", "never seen: " + ", ".join(bad_unknown)
    if not result:
        if unknown:
            return "ALLOWED_NO_DATA", "allow-listed, never seen: " + ", ".join(unknown)
        return "NO_DATA", "empty result (all referenced metrics exist)"
    bad = []
    for s in result:
        vals = [s["value"]] if "value" in s else s.get("values", [])
        if any(not math.isfinite(float(v[1])) for v in vals):
            bad.append(s.get("metric", {}))
    if bad:
        return "NAN_OR_INF", f"{len(bad)} of {len(result)} series: " + \
            "; ".join(json.dumps(m, sort_keys=True) for m in bad[:3])
    return "OK", f"{len(result)} series"


def rfc3339(ts):
    if not ts or ts.startswith("0001-"):
        return 0.0
    ts = re.sub(r"(\.\d{6})\d*", r"\1", ts.replace("Z", "+00:00"))
    return datetime.fromisoformat(ts).timestamp()


def wait_for_samples(prom, job, min_samples, deadline):
    last = "Prometheus not ready"
    while time.time() < deadline:
        status, _ = prom.get("/-/ready", timeout=2)
        if status == 200:
            n = prom.value(f'min(count_over_time(up{{job="{job}"}}[5m]))', 0)
            up = prom.value(f'min(up{{job="{job}"}})', None)
            if n >= min_samples and up == 1:
                return None
            last = f"{int(n)} of {min_samples} scrapes stored, up={up}"
        time.sleep(0.25)
    _, t = prom.api("/api/v1/targets")
    errs = [f"{a.get('scrapeUrl')}: health={a.get('health')} {a.get('lastError', '')}"
            for a in (t.get("data") or {}).get("activeTargets", [])]
    return f"timed out waiting for samples of job {job}: {last}; targets: {errs or 'none'}"


def wait_for_rules(prom, after, deadline):
    while time.time() < deadline:
        _, r = prom.api("/api/v1/rules")
        groups = (r.get("data") or {}).get("groups", [])
        if groups and all(rfc3339(g.get("lastEvaluation")) > after for g in groups):
            return groups, None
        time.sleep(0.25)
    return [], "timed out waiting for every rule group to be evaluated"


SELF_COUNTERS = [
    "prometheus_target_scrapes_sample_out_of_order_total",
    "prometheus_target_scrapes_sample_duplicate_timestamp_total",
    "prometheus_target_scrapes_sample_out_of_bounds_total",
    "prometheus_target_scrapes_exceeded_sample_limit_total",
    "prometheus_target_scrapes_exceeded_body_size_limit_total",
    "prometheus_rule_evaluation_failures_total",
]


def self_counter_problems(prom):
    status, body = prom.get("/metrics")
    if status != 200:
        return [f"cannot read Prometheus' own /metrics (HTTP {status})"]
    probs = []
    for line in body.splitlines():
        for c in SELF_COUNTERS:
            if line.startswith(c) and (len(line) == len(c) or line[len(c)] in " {"):
                val = float(line.rsplit(" ", 1)[1])
                if val > 0:
                    probs.append(f"Prometheus reports {line.strip()}")
    return probs


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prom", help="Prometheus base URL, e.g. http://127.0.0.1:PORT")
    ap.add_argument("--job", default="pollbridge", help="scrape job to wait for")
    ap.add_argument("--min-samples", type=int, default=3)
    ap.add_argument("--wait-timeout", type=float, default=30)
    ap.add_argument("--settle-timeout", type=float, default=20,
                    help="keep re-querying NO_DATA / NAN_OR_INF results this long")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--allow-no-data", action="append", default=[], metavar="METRIC")
    ap.add_argument("--rules", action="store_true", help="also check every loaded rule")
    ap.add_argument("--wait-only", action="store_true")
    ap.add_argument("--list", action="store_true", help="print substituted exprs, no Prometheus")
    ap.add_argument("--offline", action="store_true",
                    help="no Prometheus: only check that every variable resolves")
    ap.add_argument("-v", "--verbose", action="store_true", help="print OK lines too")
    ap.add_argument("dashboards", nargs="*")
    a = ap.parse_args()
    overrides = dict(v.split("=", 1) for v in a.var)
    allow = set(a.allow_no_data)

    # (where, expr, kind, extra) with substitution applied; problems found offline.
    checks, problems = [], []
    for path in a.dashboards:
        try:
            items, variables = dashboard_items(path)
        except (OSError, ValueError) as e:
            problems.append(("ERROR", path, f"cannot read dashboard: {e}"))
            continue
        for where, expr, kind, extra in items:
            if expr is None:
                checks.append((where, None, kind, extra))
                continue
            try:
                checks.append((where, substitute(expr, variables, overrides), kind, extra))
            except Unresolved as e:
                problems.append(("UNRESOLVED_VAR", where, f"${e} has no value (use --var {e}=...)"))

    if a.list or a.offline:
        for where, expr, kind, extra in checks if a.list else []:
            print(f"# {where} ({kind}{' ' + extra if extra else ''})\n{expr}\n")
        for p in problems:
            print(f"{p[0]:<16} {p[1]}: {p[2]}")
        return 1 if problems else 0
    if not a.prom:
        ap.error("--prom is required unless --list / --offline")

    prom = Prom(a.prom)
    t0 = time.time()
    err = wait_for_samples(prom, a.job, a.min_samples, t0 + a.wait_timeout)
    if err:
        print(f"ERROR            {err}")
        return 1
    if a.wait_only:
        return 0
    ready_at = time.time()
    groups = []
    if a.rules:
        groups, err = wait_for_rules(prom, ready_at, ready_at + a.wait_timeout)
        if err:
            print(f"ERROR            {err}")
            return 1

    # Rules become checks too.
    rule_checks = []
    for g in groups:
        for r in g.get("rules", []):
            kind = "record" if r.get("type") == "recording" else "alert"
            label = r.get("name")
            where = f"rule {g.get('name')} › {label}"
            if r.get("health") != "ok" or r.get("lastError"):
                problems.append(("RULE_UNHEALTHY", where,
                                 f"health={r.get('health')} {r.get('lastError', '')}"))
                continue
            rule_checks.append((where, r.get("query"), kind, label))

    all_checks = checks + rule_checks
    results = {}
    deadline = time.time() + a.settle_timeout
    pending = list(range(len(all_checks)))
    while True:
        known = prom.names()
        retry = []
        for i in pending:
            where, expr, kind, extra = all_checks[i]
            if kind == "label_name":
                _, r = prom.api(f"/api/v1/label/{extra}/values")
                v = ("OK", "") if r.get("data") else ("NO_DATA", f"no values for label {extra}")
            elif kind == "metrics":
                rx = re.compile(extra.strip("\"'"))
                v = ("OK", "") if any(rx.search(n) for n in known) else \
                    ("NO_DATA", f"no metric name matches {extra}")
            else:
                v = classify(prom, expr, known, allow)
                if v[0] == "OK" and kind == "label_values":
                    _, r = prom.query(expr)
                    if not any(extra in s.get("metric", {}) for s in r["data"]["result"]):
                        v = ("NO_DATA", f"no series of the query has label {extra}")
                if kind == "alert" and v[0] in ("NO_DATA", "NAN_OR_INF"):
                    v = ("OK", "no data (fine for an alert on a healthy system)")
                if kind == "record" and v[0] == "OK" and extra not in known:
                    v = ("NO_DATA", f"expr has data but recorded series {extra} not stored yet")
            results[i] = v
            if v[0] in ("NO_DATA", "NAN_OR_INF"):
                retry.append(i)
        if not retry or time.time() >= deadline:
            break
        pending = retry
        time.sleep(0.5)

    problems += [("PROMETHEUS", "self-metrics", p) for p in self_counter_problems(prom)]

    counts = {}
    for i, (where, expr, kind, extra) in enumerate(all_checks):
        verdict, detail = results[i]
        counts[verdict] = counts.get(verdict, 0) + 1
        if verdict not in ("OK", "ALLOWED_NO_DATA"):
            problems.append((verdict, where, detail + (f"\n                 expr: {' '.join(expr.split())}" if expr else "")))
        elif a.verbose or verdict == "ALLOWED_NO_DATA":
            print(f"{verdict:<16} {where}: {detail}")
    for verdict, where, detail in problems:
        print(f"{verdict:<16} {where}: {detail}")
    n_dash, n_rules = len(checks), len(rule_checks)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"checked {n_dash} dashboard queries and {n_rules} rules in "
          f"{time.time() - t0:.1f}s: {summary or 'nothing'}; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
