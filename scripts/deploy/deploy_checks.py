#!/usr/bin/env python3
"""Small checks of scripts/deploy/check.sh that no off-the-shelf tool makes.

    deploy_checks.py context ROOT DOCKERFILE DOCKERIGNORE
        The Docker build context as Docker computes it from .dockerignore
        (docker-py's exclude_paths, the implementation docker-compose builds
        with; run with Debian's /usr/bin/python3 where python3-docker lives):
        every COPY source of DOCKERFILE is in it, and target/, .cache/, .git/
        and node_modules/ are not.
    deploy_checks.py compose RENDERED.yaml
        On `docker-compose config` output (absolute paths): every bind-mounted
        file or folder and every build context and Dockerfile exists; every
        long-running service has a healthcheck; every depends_on names a
        condition.
    deploy_checks.py grafana DATASOURCES.yaml PROVIDERS.yaml DASHBOARD_DIR
        The dashboards as Grafana's file provisioning will see them (after
        prepare-dashboards.sh): every panel/target/variable datasource uid is
        a provisioned datasource's uid (no ${DS_...} import placeholders).
    deploy_checks.py sysctl FILE
        Every `key = value` names a kernel setting that exists here
        (/proc/sys; net.netfilter.* only where nf_conntrack is loaded), with
        numeric values.

Each prints its problems (or a one-line summary) and exits 1 on any problem.
"""
import json
import os
import pathlib
import re
import shlex
import sys


def fail(problems, summary):
    for p in problems:
        print(p)
    if not problems:
        print(summary)
    return 1 if problems else 0


def context(root, dockerfile, dockerignore):
    from docker.utils.build import exclude_paths  # Debian python3-docker

    patterns = [
        line.strip()
        for line in pathlib.Path(dockerignore).read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    rel_dockerfile = os.path.relpath(dockerfile, root)
    files = set(exclude_paths(root, patterns, dockerfile=rel_dockerfile))
    problems = []
    for line in pathlib.Path(dockerfile).read_text().splitlines():
        words = shlex.split(line.strip()) if line.strip().startswith("COPY ") else []
        if not words or any(w.startswith("--from") for w in words):
            continue
        for src in [w for w in words[1:-1] if not w.startswith("--")]:
            src = src.rstrip("/")
            if src not in files and not any(f.startswith(src + "/") for f in files):
                problems.append(f"context: COPY {src} is not in the build context (.dockerignore excludes it)")
    for banned in ("target", ".cache", ".git", "node_modules"):
        leaked = [f for f in files if f == banned or f.startswith(banned + "/") or f"/{banned}/" in f]
        if leaked:
            problems.append(f"context: {len(leaked)} files under {banned}/ would be sent, e.g. {sorted(leaked)[0]}")
    size = sum(os.path.getsize(os.path.join(root, f)) for f in files if os.path.isfile(os.path.join(root, f)))
    return fail(problems, f"{len(files)} paths, {size // 1024} KiB; every COPY source present")


def compose(rendered):
    import yaml

    doc = yaml.safe_load(pathlib.Path(rendered).read_text())
    problems = []
    mounts = 0
    for name, svc in doc["services"].items():
        build = svc.get("build")
        if build:
            ctx = pathlib.Path(build["context"])
            if not ctx.is_dir():
                problems.append(f"{name}: build context {ctx} does not exist")
            elif not (ctx / build.get("dockerfile", "Dockerfile")).is_file():
                problems.append(f"{name}: Dockerfile {ctx / build.get('dockerfile', 'Dockerfile')} does not exist")
        for vol in svc.get("volumes", []):
            if isinstance(vol, str):
                source = vol.split(":", 1)[0]
                kind = "bind" if source.startswith("/") else "volume"
            else:
                source, kind = vol.get("source", ""), vol.get("type", "volume")
            if kind == "bind":
                mounts += 1
                if not os.path.exists(source):
                    problems.append(f"{name}: bind-mounted {source} does not exist")
        one_shot = "restart" not in svc
        if not one_shot and "healthcheck" not in svc:
            problems.append(f"{name}: no healthcheck")
        deps = svc.get("depends_on", {})
        if isinstance(deps, list):
            problems.append(f"{name}: depends_on without conditions: {deps}")
        else:
            for dep, how in deps.items():
                if "condition" not in (how or {}):
                    problems.append(f"{name}: depends_on {dep} has no condition")
    return fail(problems, f"{len(doc['services'])} services, {mounts} bind mounts present, healthchecks and conditions in place")


def grafana(datasources, providers, dashboard_dir):
    import yaml

    uids = {d.get("uid") for d in yaml.safe_load(pathlib.Path(datasources).read_text())["datasources"]}
    problems = []
    refs = 0
    unknown = {}

    def walk(node, where):
        nonlocal refs
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and "uid" in ds and not str(ds["uid"]).startswith("-- "):
                refs += 1
                if ds["uid"] not in uids:
                    unknown[(where, ds["uid"])] = unknown.get((where, ds["uid"]), 0) + 1
            for k, v in node.items():
                if k not in ("__inputs", "__requires"):
                    walk(v, where)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    files = sorted(pathlib.Path(dashboard_dir).glob("*.json"))
    if not files:
        problems.append(f"no dashboards in {dashboard_dir}")
    for f in files:
        walk(json.loads(f.read_text()), f.name)
    for (where, uid), count in sorted(unknown.items()):
        problems.append(f"{where}: {count} datasource references to uid {uid!r}, which is not provisioned ({sorted(uids)})")
    provider_paths = [p["options"]["path"] for p in yaml.safe_load(pathlib.Path(providers).read_text())["providers"]]
    return fail(problems, f"{len(files)} dashboard(s), {refs} datasource references, all to provisioned uids; providers read {provider_paths}")


def sysctl(path):
    problems = []
    checked = skipped = 0
    conntrack = os.path.exists("/proc/sys/net/netfilter/nf_conntrack_max")
    for n, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        m = re.fullmatch(r"-?([a-z0-9_.]+)\s*=\s*(.+)", line)
        if not m:
            problems.append(f"line {n}: not `key = value`: {line!r}")
            continue
        key, value = m.groups()
        if key.startswith("net.netfilter.") and not conntrack:
            skipped += 1
            continue
        if not os.path.exists("/proc/sys/" + key.replace(".", "/")):
            problems.append(f"line {n}: {key} is not a kernel setting here")
        elif not all(v.isdigit() for v in value.split()):
            problems.append(f"line {n}: {key} = {value!r} is not numeric")
        checked += 1
    note = f" ({skipped} net.netfilter.* skipped: nf_conntrack not loaded)" if skipped else ""
    return fail(problems, f"{checked} settings exist in /proc/sys with numeric values{note}")


def main(argv):
    commands = {"context": (context, 3), "compose": (compose, 1), "grafana": (grafana, 3), "sysctl": (sysctl, 1)}
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        print(__doc__)
        return 2
    fn, _ = commands[argv[1]]
    return fn(*argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
