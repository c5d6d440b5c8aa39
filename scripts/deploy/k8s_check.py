#!/usr/bin/env python3
"""Cross-resource checks of the rendered Kubernetes manifests, the ones no
schema can make (kubernetes-validate checks each object on its own).

    k8s_check.py BASE.yaml [MONITORING.yaml] [--config-out FILE]

BASE.yaml is `kubectl kustomize deploy/k8s`, MONITORING.yaml is
`kubectl kustomize deploy/k8s/monitoring`. Checks:

- the Deployment's selector matches its pod template's labels;
- every Service, the PodDisruptionBudget and the NetworkPolicy select the
  pods; every named targetPort / policy port / probe port is a containerPort
  name of the container;
- readiness probes /readyz and liveness /healthz on the admin port;
- the ConfigMap mounted as the config volume exists and holds pollbridge.toml
  (written to --config-out so the caller can run --check-config on it);
- terminationGracePeriodSeconds is longer than the preStop sleep plus the
  configured shutdown.drain_timeout;
- the HPA scales the Deployment, with minReplicas = the Deployment's replicas;
- the ServiceMonitor selects exactly the admin Service, scrapes one of its
  port names, and its jobLabel gives job="pollbridge" (the job the rules,
  alerts and dashboards select on).

Prints every problem; exits 1 if there is any.
"""
import argparse
import re
import sys
import tomllib

import yaml

PROBLEMS = []


def bad(message):
    PROBLEMS.append(message)


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return int(m.group(1)) * units[m.group(2)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("monitoring", nargs="?")
    parser.add_argument("--config-out")
    parser.add_argument("--job", default="pollbridge")
    args = parser.parse_args()

    docs = load(args.base)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        bad(f"expected one Deployment, found {len(deployments)}")
        return report()
    dep = deployments[0]
    spec = dep["spec"]
    pod = spec["template"]
    labels = pod["metadata"].get("labels", {})
    if not matches(spec["selector"].get("matchLabels", {}), labels):
        bad(f"Deployment selector {spec['selector']} does not match its pod labels {labels}")
    containers = pod["spec"]["containers"]
    c = containers[0]
    port_names = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    numbers = set(port_names.values())

    def port_ok(port, what):
        if isinstance(port, int):
            if port not in numbers:
                bad(f"{what}: port {port} is not a containerPort ({sorted(numbers)})")
        elif port not in port_names:
            bad(f"{what}: port name {port!r} is not a containerPort name ({sorted(port_names)})")

    services = by_kind.get("Service", [])
    for svc in services:
        name = svc["metadata"]["name"]
        if not matches(svc["spec"].get("selector", {}), labels):
            bad(f"Service {name} selector {svc['spec'].get('selector')} matches no pod")
        for p in svc["spec"]["ports"]:
            port_ok(p.get("targetPort", p["port"]), f"Service {name} targetPort")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not matches(pdb["spec"].get("selector", {}).get("matchLabels", {}), labels):
            bad(f"PodDisruptionBudget {pdb['metadata']['name']} selects no pod (an empty selector would match every pod of the namespace)")
    for np in by_kind.get("NetworkPolicy", []):
        if not matches(np["spec"]["podSelector"].get("matchLabels", {}), labels):
            bad(f"NetworkPolicy {np['metadata']['name']} selects no pod")
        for rule in np["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                port_ok(p["port"], f"NetworkPolicy {np['metadata']['name']}")
    for kind, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        probe = c.get(kind)
        if not probe:
            bad(f"container has no {kind}")
            continue
        get = probe.get("httpGet", {})
        port_ok(get.get("port"), kind)
        if get.get("path") != path or port_names.get(get.get("port"), get.get("port")) != port_names.get("admin"):
            bad(f"{kind} should GET {path} on the admin port, has {get}")

    # The configuration volume and its ConfigMap.
    config = None
    maps = {m["metadata"]["name"]: m for m in by_kind.get("ConfigMap", [])}
    for vol in pod["spec"].get("volumes", []):
        if "configMap" in vol:
            name = vol["configMap"]["name"]
            if name not in maps:
                bad(f"volume {vol['name']} mounts ConfigMap {name}, which is not rendered")
            elif "pollbridge.toml" not in maps[name].get("data", {}):
                bad(f"ConfigMap {name} has no pollbridge.toml")
            else:
                config = maps[name]["data"]["pollbridge.toml"]
    if config is None:
        bad("no ConfigMap with pollbridge.toml is mounted")
    else:
        mounted = [m["mountPath"] for m in c.get("volumeMounts", [])]
        if not any(f"{m.rstrip('/')}/pollbridge.toml" in " ".join(c.get("args", [])) for m in mounted):
            bad(f"the container's args {c.get('args')} don't name pollbridge.toml under a mount ({mounted})")
        if args.config_out:
            with open(args.config_out, "w") as f:
                f.write(config)
        drain = seconds(tomllib.loads(config).get("shutdown", {}).get("drain_timeout", "10s"))
        sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        if grace <= sleep + drain:
            bad(f"terminationGracePeriodSeconds {grace} is not longer than preStop sleep {sleep} s + drain_timeout {drain} s")

    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") != dep["metadata"]["name"]:
            bad(f"HPA {hpa['metadata']['name']} scales {ref}, not the Deployment")
        if hpa["spec"].get("minReplicas", 1) != spec.get("replicas", 1):
            bad(f"HPA minReplicas {hpa['spec'].get('minReplicas')} differs from the Deployment's replicas {spec.get('replicas')}")

    if args.monitoring:
        mon = load(args.monitoring)
        monitors = [d for d in mon if d["kind"] == "ServiceMonitor"]
        if not monitors:
            bad("the monitoring render has no ServiceMonitor")
        for sm in monitors:
            sel = sm["spec"]["selector"].get("matchLabels", {})
            hits = [s for s in services if matches(sel, s["metadata"].get("labels", {}))]
            if len(hits) != 1:
                bad(f"ServiceMonitor {sm['metadata']['name']} selects {len(hits)} Services ({[s['metadata']['name'] for s in hits]}), not exactly the admin one")
                continue
            svc = hits[0]
            svc_ports = {p.get("name"): p for p in svc["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in svc_ports:
                    bad(f"ServiceMonitor endpoint port {ep.get('port')!r} is not a port name of Service {svc['metadata']['name']} ({sorted(svc_ports)})")
                elif svc_ports[ep["port"]].get("targetPort") != "admin":
                    bad(f"ServiceMonitor scrapes port {ep['port']!r}, which is not the admin listener")
                if ep.get("path", "/metrics") != "/metrics":
                    bad(f"ServiceMonitor path {ep.get('path')} is not /metrics")
            job = svc["metadata"].get("labels", {}).get(sm["spec"].get("jobLabel", ""), svc["metadata"]["name"])
            if job != args.job:
                bad(f"ServiceMonitor gives job={job!r}; rules, alerts and dashboards select job={args.job!r}")
        if not any(d["kind"] == "PrometheusRule" for d in mon):
            bad("the monitoring render has no PrometheusRule")
    return report()


def report():
    for p in PROBLEMS:
        print(f"k8s_check: {p}")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
