#!/usr/bin/env python3
"""Write the config of check-live.sh's throw-away Prometheus, derived from the
deployed one so that its job and rule files are the ones under test.

  live_prom_config.py --src deploy/prometheus/prometheus.yml --url METRICS_URL
                      [--job pollbridge] [--interval 1s] --out FILE

Keeps the `--job` scrape config (fails if the deployed config has none),
drops every other job, points it at METRICS_URL (scheme, host:port, path,
query) with a static target, sets scrape and evaluation interval to
--interval, and makes rule_files absolute (resolved relative to --src, like
Prometheus does). Prints the absolute rule file paths, one per line.
"""
import argparse
import glob
import os
import sys
import urllib.parse

import yaml


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--job", default="pollbridge")
    ap.add_argument("--interval", default="1s")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    with open(a.src) as f:
        cfg = yaml.safe_load(f) or {}
    jobs = [j for j in cfg.get("scrape_configs") or [] if j.get("job_name") == a.job]
    if len(jobs) != 1:
        sys.exit(f"{a.src}: want exactly one scrape config with job_name {a.job!r}, found {len(jobs)}")
    job = jobs[0]
    u = urllib.parse.urlsplit(a.url)
    if u.scheme not in ("http", "https") or not u.netloc:
        sys.exit(f"not an http(s) URL: {a.url}")
    for key in ("static_configs", "file_sd_configs", "kubernetes_sd_configs", "dns_sd_configs",
                "consul_sd_configs", "http_sd_configs", "relabel_configs"):
        job.pop(key, None)
    job["static_configs"] = [{"targets": [u.netloc]}]
    job["scheme"] = u.scheme
    job["metrics_path"] = u.path or "/metrics"
    if u.query:
        job["params"] = {k: v for k, v in urllib.parse.parse_qs(u.query).items()}
    job["scrape_interval"] = a.interval
    job["scrape_timeout"] = a.interval
    cfg["scrape_configs"] = [job]
    g = cfg.setdefault("global", {}) or {}
    g["scrape_interval"] = a.interval
    g["evaluation_interval"] = a.interval
    g["scrape_timeout"] = a.interval
    cfg["global"] = g
    cfg.pop("alerting", None)
    cfg.pop("remote_write", None)
    cfg.pop("remote_read", None)

    base = os.path.dirname(os.path.abspath(a.src))
    rules = []
    for pat in cfg.get("rule_files") or []:
        full = pat if os.path.isabs(pat) else os.path.join(base, pat)
        rules += sorted(glob.glob(full)) or [full]
    cfg["rule_files"] = rules
    with open(a.out, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    for r in rules:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
