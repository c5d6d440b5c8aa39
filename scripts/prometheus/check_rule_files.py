#!/usr/bin/env python3
"""Project policy for Prometheus rule files (promtool checks the syntax and PromQL).

  check_rule_files.py --runbook-doc DOC.md... RULES.yml...

- every alert has a `severity` label and non-empty `summary`, `description` and
  `runbook` annotations;
- the runbook is `docs/operations.md#alert-<lowercased alert name>` and that anchor
  exists in one of the runbook docs (an `<a id="...">` or a heading that
  GitHub turns into that anchor);
- recording rule names follow `level:metric:operations` and are unique;
- alert names are unique; no group sets its own `interval:` (it would
  override evaluation_interval and delay results, see RECIPES §1).
"""
import argparse
import re
import sys

import yaml

# Where the runbooks live, relative to the repository root (the one copy).
RUNBOOK_DOC = "docs/operations.md"

RECORD_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]*[a-zA-Z0-9_]:[a-zA-Z0-9_]+$")


def gh_anchor(heading):
    """GitHub's heading anchor: lowercase, drop punctuation, spaces to dashes."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors_in(paths):
    found = set()
    for p in paths:
        try:
            text = open(p, encoding="utf-8").read()
        except OSError:
            continue
        found.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', text))
        for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
            found.add(gh_anchor(m.group(1)))
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runbook-doc", action="append", default=[],
                    help="markdown file(s) whose anchors the runbook annotations must hit")
    ap.add_argument("rule_files", nargs="+")
    args = ap.parse_args()
    anchors = anchors_in(args.runbook_doc)
    errs, alerts, records = [], {}, {}
    for path in args.rule_files:
        try:
            doc = yaml.safe_load(open(path, encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            errs.append(f"{path}: cannot read: {e}")
            continue
        for g in doc.get("groups", []) or []:
            gname = g.get("name")
            if "interval" in g:
                errs.append(f"{path}: group {gname}: sets interval: {g['interval']} "
                            "(use the global evaluation_interval)")
            for r in g.get("rules", []) or []:
                if "alert" in r:
                    name = r["alert"]
                    where = f"{path}: alert {name}"
                    if name in alerts:
                        errs.append(f"{where}: duplicate (also in {alerts[name]})")
                    alerts[name] = path
                    if not (r.get("labels") or {}).get("severity"):
                        errs.append(f"{where}: no severity label")
                    ann = r.get("annotations") or {}
                    for key in ("summary", "description", "runbook"):
                        if not str(ann.get(key, "")).strip():
                            errs.append(f"{where}: no {key} annotation")
                    want = f"{RUNBOOK_DOC}#alert-{name.lower()}"
                    rb = str(ann.get("runbook", ""))
                    if rb and rb != want:
                        errs.append(f"{where}: runbook is {rb!r}, want {want!r}")
                    if rb and args.runbook_doc and rb.split("#", 1)[-1] not in anchors:
                        errs.append(f"{where}: anchor #{rb.split('#', 1)[-1]} not found in "
                                    f"{', '.join(args.runbook_doc)}")
                elif "record" in r:
                    name = r["record"]
                    if not RECORD_RE.match(name):
                        errs.append(f"{path}: record {name}: not of the form level:metric:operations")
                    if name in records:
                        errs.append(f"{path}: record {name}: duplicate (also in {records[name]})")
                    records[name] = path
    for e in errs:
        print(e)
    if errs:
        print(f"rule policy: FAIL ({len(errs)} problems)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
