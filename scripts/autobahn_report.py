#!/usr/bin/env python3
"""Reads an Autobahn TestSuite report (OUTDIR/index.json) and applies the
pass rule of scripts/autobahn.sh.

A case passes when `behavior` is OK, NON-STRICT or INFORMATIONAL and
`behaviorClose` is OK or INFORMATIONAL. A selected case with no entry in the
report fails. Prints each failing case with its behaviors and the report's
description and result text, then `autobahn: N passed, M failed`. Exits 1 on
any failure, or when fewer than --expected cases were reported.

Usage: autobahn_report.py OUTDIR [--expected N] [--cases PAT...] [--exclude PAT...]
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys

PASS_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASS_CLOSE = {"OK", "INFORMATIONAL"}

# Every case of the suite, as "group:count" (ids group.1 .. group.count),
# taken from autobahntestsuite 25.10.1: 301 cases in 1.* to 10.*, and 216 of
# permessage-deflate in 12.* and 13.*.
SUITE = (
    "1.1:8 1.2:8 2:11 3:7 4.1:5 4.2:5 5:20 6.1:3 6.2:4 6.3:2 6.4:4 6.5:5 "
    "6.6:11 6.7:4 6.8:2 6.9:4 6.10:3 6.11:5 6.12:8 6.13:5 6.14:10 6.15:1 "
    "6.16:3 6.17:5 6.18:5 6.19:5 6.20:7 6.21:8 6.22:34 6.23:7 7.1:6 7.3:6 "
    "7.5:1 7.7:13 7.9:9 7.13:2 9.1:6 9.2:6 9.3:9 9.4:9 9.5:6 9.6:6 9.7:6 "
    "9.8:6 10.1:1 "
    "12.1:18 12.2:18 12.3:18 12.4:18 12.5:18 "
    "13.1:18 13.2:18 13.3:18 13.4:18 13.5:18 13.6:18 13.7:18"
)


def suite_ids() -> list[str]:
    ids = []
    for group in SUITE.split():
        prefix, count = group.split(":")
        ids.extend(f"{prefix}.{n}" for n in range(1, int(count) + 1))
    return ids


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in case_id.split("."))


def resolve(patterns: list[str], known: list[str]) -> set[str]:
    """Case patterns as Autobahn reads them: `*` is a wildcard, the rest literal."""
    out: set[str] = set()
    for pat in patterns:
        if "*" in pat:
            rx = re.compile(re.escape(pat).replace(r"\*", ".*") + "$")
            out.update(c for c in known if rx.match(c))
        else:
            out.add(pat)
    return out


def plain(text: object, limit: int = 400) -> str:
    """Report text without HTML, on one line, cut to `limit` characters."""
    s = html.unescape(re.sub(r"<[^>]+>", " ", str(text or "")))
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--expected", type=int, default=0, help="fewest cases that must have run")
    ap.add_argument("--cases", nargs="*", default=["*"])
    ap.add_argument("--exclude", nargs="*", default=[])
    args = ap.parse_args()

    index_path = os.path.join(args.outdir, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print(f"autobahn: cannot read {index_path}: {e}")
        index = {}
    # One agent (the gateway); merge in case a runner names it differently.
    results: dict[str, dict] = {}
    for agent_cases in index.values():
        results.update(agent_cases)

    known = suite_ids()
    selected = resolve(args.cases, known) - resolve(args.exclude, known)
    ids = sorted(selected | set(results), key=case_key)

    passed, failed = 0, []
    for case_id in ids:
        entry = results.get(case_id)
        if entry is None:
            failed.append((case_id, "(no entry in the report: the case did not run)"))
            continue
        behavior, close = entry.get("behavior"), entry.get("behaviorClose")
        if behavior in PASS_BEHAVIOR and close in PASS_CLOSE:
            passed += 1
            continue
        detail = [f"behavior={behavior} behaviorClose={close}"]
        report = {}
        if entry.get("reportfile"):
            try:
                with open(os.path.join(args.outdir, entry["reportfile"])) as f:
                    report = json.load(f)
            except (OSError, ValueError):
                pass
        for key in ("description", "expectation", "result", "resultClose"):
            if report.get(key):
                detail.append(f"{key}: {plain(report[key])}")
        for key in ("remoteCloseCode", "localCloseCode", "wasClean", "wasNotCleanReason"):
            if key in report:
                detail.append(f"{key}={report[key]}")
        failed.append((case_id, "\n    ".join(detail)))

    for case_id, detail in failed:
        print(f"FAIL {case_id}: {detail}")
    ran = len(results)
    short = ran < args.expected
    if short:
        print(f"autobahn: only {ran} cases ran, {args.expected} expected")
    print(f"autobahn: {passed} passed, {len(failed)} failed")
    return 1 if failed or short or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
