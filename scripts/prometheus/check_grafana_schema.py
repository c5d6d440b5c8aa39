#!/usr/bin/env python3
"""Structure check of Grafana dashboard JSON files.

  check_grafana_schema.py --schema SCHEMA.json [--strict] DASHBOARD.json...

1. JSON Schema validation against the `Dashboard` type of `@grafana/schema`,
   turned into a JSON Schema by ts-json-schema-generator (obs-tools.sh does
   that). Catches unknown or misspelled keys at any depth, wrong types and
   missing required keys. The default *lenient* profile accepts what real
   exports legitimately carry and the TypeScript type leaves out (`__inputs`,
   `__requires`, `__elements`, `$$hashKey`, a variable's `definition`,
   threshold steps without `value`, ...) but keeps `additionalProperties:
   false`, so typos are still caught. `--strict` validates against the raw
   generated schema.
2. Project policy (always): importable (`__inputs` declares DS_PROMETHEUS and
   every panel, target and query variable uses `${DS_PROMETHEUS}`); every
   non-row panel has type, title, description, gridPos, datasource and targets
   with a non-empty `expr` and unique refIds; panel ids are unique; gridPos
   stays within 24 columns and panels do not overlap.

Prints every problem with its JSON path; exit 1 if any.
"""
import argparse
import copy
import json
import sys

import jsonschema

DS_UID = "${DS_PROMETHEUS}"


def lenient(schema):
    s = copy.deepcopy(schema)
    d = s["definitions"]
    dash = d["Dashboard"]["properties"]
    dash["__inputs"] = {"type": "array", "items": {"type": "object"}}
    dash["__requires"] = {"type": "array", "items": {"type": "object"}}
    dash["__elements"] = {"type": "object"}
    # Panels are Panel | RowPanel; an anyOf gives unreadable errors, so
    # discriminate on type == "row".
    row_or_panel = {
        "if": {"properties": {"type": {"const": "row"}}, "required": ["type"]},
        "then": {"$ref": "#/definitions/RowPanel"},
        "else": {"$ref": "#/definitions/Panel"},
    }
    dash["panels"]["items"] = row_or_panel
    d["RowPanel"]["properties"]["panels"]["items"] = {"$ref": "#/definitions/Panel"}
    # Exports carry targets on row panels and a legacy libraryPanel-less shape.
    d["RowPanel"]["properties"]["targets"] = {"type": "array"}
    d["RowPanel"]["properties"]["description"] = {"type": "string"}
    # Threshold base step: exports write `"value": null` or leave it out.
    d["Threshold"]["required"] = ["color"]
    # `current` of a fresh variable is often {} or lacks text.
    d["VariableOption"].pop("required", None)
    for key in ("definition", "tagsQuery", "tagValuesQuery"):
        d["VariableModel"]["properties"][key] = {"type": "string"}
    d["VariableModel"]["properties"]["tags"] = {"type": "array"}
    d["VariableModel"]["properties"]["useTags"] = {"type": "boolean"}
    if "DashboardLink" in d:
        d["DashboardLink"]["required"] = [r for r in d["DashboardLink"].get("required", [])
                                          if r in ("title", "type")]
    return s


def strip_export_noise(obj):
    """Drop keys Grafana's UI adds that no schema describes."""
    if isinstance(obj, dict):
        return {k: strip_export_noise(v) for k, v in obj.items()
                if k not in ("$$hashKey", "__systemRef")}
    if isinstance(obj, list):
        return [strip_export_noise(v) for v in obj]
    return obj


def json_path(err_path):
    out = "$"
    for p in err_path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def schema_errors(validator, dash):
    errs = []
    for e in sorted(validator.iter_errors(strip_export_noise(dash)), key=lambda e: list(e.path)):
        # Report the most specific cause of if/then/else and anyOf failures.
        leaves = [e]
        while leaves and leaves[0].context:
            leaves = sorted(leaves[0].context, key=lambda c: -len(c.path))
        for leaf in leaves[:3]:
            errs.append(f"schema: {json_path(leaf.absolute_path)}: {leaf.message}")
    return errs


def walk_panels(dash):
    """Yield (json_path, panel) for top-level panels and panels nested in rows."""
    for i, p in enumerate(dash.get("panels", []) or []):
        yield f"$.panels[{i}]", p
        for j, q in enumerate(p.get("panels", []) or []):
            yield f"$.panels[{i}].panels[{j}]", q
    for i, r in enumerate(dash.get("rows", []) or []):
        for j, q in enumerate(r.get("panels", []) or []):
            yield f"$.rows[{i}].panels[{j}]", q


def ds_ok(ds):
    if isinstance(ds, dict):
        return ds.get("uid") == DS_UID
    return ds == DS_UID


def policy_errors(dash):
    errs = []
    inputs = [i.get("name") for i in dash.get("__inputs", []) if isinstance(i, dict)]
    if "DS_PROMETHEUS" not in inputs:
        errs.append("policy: $.__inputs: no DS_PROMETHEUS input (dashboard is not importable)")
    if not isinstance(dash.get("schemaVersion"), int) or dash.get("schemaVersion", 0) < 36:
        errs.append("policy: $.schemaVersion: want an integer >= 36")
    for key in ("title", "uid"):
        if not dash.get(key):
            errs.append(f"policy: $.{key}: missing")
    ids, boxes = {}, []
    for path, p in walk_panels(dash):
        ptype = p.get("type")
        pid = p.get("id")
        if pid in ids:
            errs.append(f"policy: {path}.id: {pid} also used by {ids[pid]}")
        ids[pid] = path
        gp = p.get("gridPos")
        if not isinstance(gp, dict) or not all(isinstance(gp.get(k), int) for k in "hwxy"):
            errs.append(f"policy: {path}.gridPos: missing or not integer h/w/x/y")
        else:
            if gp["x"] < 0 or gp["w"] < 1 or gp["x"] + gp["w"] > 24 or gp["h"] < 1:
                errs.append(f"policy: {path}.gridPos: {gp} outside the 24-column grid")
            boxes.append((path, gp))
        if ptype == "row":
            if not p.get("title"):
                errs.append(f"policy: {path}: row without title")
            continue
        for key in ("type", "title", "description"):
            if not isinstance(p.get(key), str) or not p.get(key).strip():
                errs.append(f"policy: {path}.{key}: missing or empty")
        if not ds_ok(p.get("datasource")):
            errs.append(f"policy: {path}.datasource: want uid {DS_UID}, got {p.get('datasource')!r}")
        targets = p.get("targets")
        if not isinstance(targets, list) or not targets:
            errs.append(f"policy: {path}.targets: no targets")
            continue
        refs = set()
        for k, t in enumerate(targets):
            tp = f"{path}.targets[{k}]"
            if not isinstance(t.get("expr"), str) or not t["expr"].strip():
                errs.append(f"policy: {tp}.expr: missing or empty")
            if t.get("refId") in refs:
                errs.append(f"policy: {tp}.refId: duplicate {t.get('refId')!r}")
            refs.add(t.get("refId"))
            if "datasource" in t and not ds_ok(t["datasource"]):
                errs.append(f"policy: {tp}.datasource: want uid {DS_UID}, got {t['datasource']!r}")
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            (pa, ga), (pb, gb) = boxes[a], boxes[b]
            if (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                    and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]):
                errs.append(f"policy: {pa}.gridPos overlaps {pb}.gridPos")
    for i, v in enumerate(dash.get("templating", {}).get("list", []) or []):
        if v.get("type") == "query" and not ds_ok(v.get("datasource")):
            errs.append(f"policy: $.templating.list[{i}].datasource: want uid {DS_UID}")
    return errs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--schema", required=True)
    ap.add_argument("--strict", action="store_true", help="raw generated schema, no lenient profile")
    ap.add_argument("dashboards", nargs="+")
    args = ap.parse_args()
    with open(args.schema) as f:
        schema = json.load(f)
    if not args.strict:
        schema = lenient(schema)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema)
    bad = 0
    for path in args.dashboards:
        try:
            with open(path) as f:
                dash = json.load(f)
        except (OSError, ValueError) as e:
            print(f"{path}: cannot read JSON: {e}")
            bad += 1
            continue
        if isinstance(dash, dict) and isinstance(dash.get("dashboard"), dict):
            dash = dash["dashboard"]  # API export wrapper
        errs = schema_errors(validator, dash) + policy_errors(dash)
        for e in errs:
            print(f"{path}: {e}")
        bad += bool(errs)
    if bad:
        print(f"grafana structure: FAIL ({bad} of {len(args.dashboards)} dashboards)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
