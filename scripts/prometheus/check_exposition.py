#!/usr/bin/env python3
"""Duplicate-series check of a Prometheus text exposition (format 0.0.4).

  check_exposition.py FILE    (or - for stdin)

promtool 2.42 does not flag a series that appears twice, and Prometheus 2.42
silently keeps one of them (RECIPES §1), so a double registration or a
label-set collision in the gateway would go unnoticed. This parses the text
with the reference parser of the `prometheus-client` package (a parse error
fails too) and fails on any sample name + label set seen more than once, and
on a metric family declared (TYPE) more than once.
"""
import sys
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().split("\n")[2], file=sys.stderr)
        return 2
    src = sys.argv[1]
    text = sys.stdin.read() if src == "-" else open(src, encoding="utf-8").read()
    problems = []
    types = Counter(line.split()[2] for line in text.splitlines()
                    if line.startswith("# TYPE ") and len(line.split()) >= 4)
    problems += [f"metric family {n} declared {c} times" for n, c in sorted(types.items()) if c > 1]
    seen = Counter()
    try:
        n = 0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                seen[(s.name, tuple(sorted(s.labels.items())))] += 1
                n += 1
    except ValueError as e:
        print(f"exposition: cannot parse: {e}")
        return 1
    for (name, labels), c in sorted(seen.items()):
        if c > 1:
            lbl = ",".join(f'{k}="{v}"' for k, v in labels)
            problems.append(f"duplicate series {name}{{{lbl}}} appears {c} times")
    for p in problems:
        print(f"exposition: {p}")
    if problems:
        return 1
    if n == 0:
        print("exposition: no samples at all")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
