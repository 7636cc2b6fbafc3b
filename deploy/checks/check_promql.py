#!/usr/bin/env python3
"""Checks the Grafana dashboard and the alert rules against FalconPay's
metric contract.

    check_promql.py dashboard DASHBOARD.json EMIT_RULES.yml
    check_promql.py rules RULES.yml

`dashboard`: the JSON parses; it has a uid, a title and a `datasource`
variable that every panel and query uses; panel ids are unique; panels do
not overlap on the grid; every panel but rows has at least one query with an
expression; and every expression names only metrics of the contract below,
with labels those metrics have. It then writes every expression (Grafana's
$__rate_interval and friends replaced by 5m) into EMIT_RULES.yml as
recording rules, for `promtool check rules` to parse them with Prometheus's
own parser.

`rules`: every alert and recording rule's expression names only contract
metrics (plus Prometheus's own `up`), with their labels.

Prints one line per problem and exits 1 when there is any. The metric-name
scan is lexical (strings, label matchers, ranges and grouping clauses are
removed, then every remaining identifier that is not a function or keyword
must be a metric), so a metric name misspelt or invented fails here, and a
syntax error fails in promtool.
"""

import json
import re
import sys

import yaml

# The metric contract: name -> (type, labels). Histograms also export
# _bucket (with `le`), _sum and _count.
METRICS = {
    "falcon_messages_handled_total": ("counter", {"actor"}),
    "falcon_messages_failed_total": ("counter", {"actor"}),
    "falcon_messages_redelivered_total": ("counter", {"actor"}),
    "falcon_messages_dead_lettered_total": ("counter", {"actor"}),
    "falcon_handler_duration_seconds": ("histogram", {"actor"}),
    "falcon_batch_size": ("histogram", {"actor"}),
    "falcon_sagas_completed_total": ("counter", set()),
    "falcon_sagas_failed_total": ("counter", {"reason"}),
    "falcon_sagas_compensated_total": ("counter", set()),
    "falcon_saga_duration_seconds": ("histogram", {"outcome"}),
    "falcon_sagas_stuck": ("gauge", set()),
    "falcon_dlq_depth": ("gauge", set()),
    "falcon_consumer_pending": ("gauge", {"consumer"}),
    "falcon_consumer_ack_pending": ("gauge", {"consumer"}),
    "falcon_outbox_backlog": ("gauge", {"actor"}),
    "falcon_breaker_state": ("gauge", set()),
    "falcon_relay_published_total": ("counter", {"actor"}),
    "falcon_actor_restarts_total": ("counter", set()),
    "falcon_outbox_set_aside_total": ("counter", {"actor"}),
    "falcon_stream_bytes": ("gauge", {"stream"}),
    "falcon_stream_max_bytes": ("gauge", {"stream"}),
    "falcon_events_unauthenticated_total": ("counter", {"actor"}),
    "falcon_captures_resolved_total": ("counter", {"outcome"}),
    "falcon_rows_pruned_total": ("counter", {"actor", "table"}),
    # The reconciliation actor (actors/recon): mismatches opened by kind,
    # those open after the last run, runs by outcome (ok, error), and when
    # the last run finished (Unix seconds).
    "falcon_recon_mismatches_total": ("counter", {"kind"}),
    "falcon_recon_mismatches_open": ("gauge", set()),
    "falcon_recon_pending": ("gauge", set()),
    "falcon_recon_runs_total": ("counter", {"outcome"}),
    "falcon_recon_last_run_timestamp_seconds": ("gauge", set()),
    # The process's allocator (src/memory.rs): bytes held, and resident
    # pages the allocator keeps.
    "falcon_memory_allocated_bytes": ("gauge", set()),
    "falcon_memory_resident_bytes": ("gauge", set()),
}

# Labels Prometheus adds to every scraped series (target labels).
TARGET_LABELS = {"instance", "job", "pod", "namespace", "service", "container", "endpoint"}

# Prometheus's own series, allowed in alert rules only.
PROMETHEUS_SERIES = {"up": set()}

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "start", "end"}

GRAFANA_VARIABLES = re.compile(r"\$__(rate_interval|interval|range)|\$\{__(rate_interval|interval|range)\}")


def series_names():
    """Every series name the contract exports -> its labels."""
    out = {}
    for name, (kind, labels) in METRICS.items():
        out[name] = set(labels)
        if kind == "histogram":
            out[name + "_bucket"] = set(labels) | {"le"}
            out[name + "_sum"] = set(labels)
            out[name + "_count"] = set(labels)
    return out


def scan(expr, known):
    """Problems with one PromQL expression: unknown metrics or labels."""
    problems = []
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    used = []
    # metric{matchers}: check each matcher's label against that metric.
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}", text):
        name, matchers = m.group(1), m.group(2)
        for label in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            if label == "__name__":
                problems.append("selects by __name__; name the metric instead")
            elif name in known and label not in known[name] | TARGET_LABELS:
                problems.append(f"{name} has no label `{label}`")
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    grouping = []
    def keep_grouping(m):
        grouping.extend(l.strip() for l in m.group(2).split(",") if l.strip())
        return " "
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)",
                  keep_grouping, text, flags=re.IGNORECASE)
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)", text):
        ident = m.group(1)
        if ident.lower() in KEYWORDS:
            continue
        if re.match(r"\s*\(", text[m.end():]):
            continue  # a function or aggregation
        if ident not in known:
            problems.append(f"unknown metric `{ident}`")
        else:
            used.append(ident)
    labels_of_used = set().union(*(known[u] for u in used)) if used else set()
    for label in grouping:
        if label not in labels_of_used | TARGET_LABELS:
            problems.append(f"groups by `{label}`, which no metric in the expression has")
    if not used:
        problems.append("names no metric at all")
    return problems


def check_dashboard(path, emit):
    problems = []
    with open(path) as f:
        dash = json.load(f)
    for key in ("uid", "title", "panels", "schemaVersion"):
        if not dash.get(key):
            problems.append(f"dashboard has no `{key}`")
    variables = [v.get("name") for v in dash.get("templating", {}).get("list", [])
                 if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    if "datasource" not in variables:
        problems.append("no `datasource` variable of type datasource (prometheus)")

    known = series_names()
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))  # panels inside collapsed rows
    ids, cells, rules = set(), {}, []
    for p in panels:
        pid, title = p.get("id"), p.get("title", "?")
        where = f"panel {pid} ({title})"
        if pid in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(pid)
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"{where}: no complete gridPos")
            continue
        if g["x"] < 0 or g["x"] + g["w"] > 24:
            problems.append(f"{where}: wider than the 24-column grid")
        for cx in range(g["x"], g["x"] + g["w"]):
            for cy in range(g["y"], g["y"] + g["h"]):
                if (cx, cy) in cells:
                    problems.append(f"{where}: overlaps panel {cells[(cx, cy)]}")
                    break
                cells[(cx, cy)] = pid
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        ds = (p.get("datasource") or {}).get("uid")
        if ds != "${datasource}":
            problems.append(f"{where}: datasource is {ds!r}, not ${{datasource}}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no query")
        for t in targets:
            expr = (t.get("expr") or "").strip()
            ref = t.get("refId", "?")
            if not expr:
                problems.append(f"{where} query {ref}: empty expression")
                continue
            if (t.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"{where} query {ref}: datasource is not ${{datasource}}")
            for problem in scan(expr, known):
                problems.append(f"{where} query {ref}: {problem}")
            rules.append({"record": f"dashboard:panel_{pid}_{ref}",
                          "expr": GRAFANA_VARIABLES.sub("5m", expr)})
    with open(emit, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-expressions", "rules": rules}]}, f,
                       sort_keys=False)
    return problems, len(rules)


def check_rules(path):
    problems = []
    with open(path) as f:
        doc = yaml.safe_load(f)
    known = series_names()
    known.update(PROMETHEUS_SERIES)
    n = 0
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            n += 1
            name = rule.get("alert") or rule.get("record")
            for problem in scan(str(rule.get("expr", "")), known):
                problems.append(f"rule {name}: {problem}")
            if "alert" in rule:
                labels = rule.get("labels") or {}
                if labels.get("severity") not in ("page", "warning", "ticket"):
                    problems.append(f"rule {name}: severity must be page, warning or ticket")
                annotations = rule.get("annotations") or {}
                for key in ("summary", "runbook"):
                    if not annotations.get(key):
                        problems.append(f"rule {name}: no `{key}` annotation")
    return problems, n


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "dashboard" and len(sys.argv) == 4:
        problems, n = check_dashboard(sys.argv[2], sys.argv[3])
        what = "expressions"
    elif len(sys.argv) >= 2 and sys.argv[1] == "rules" and len(sys.argv) == 3:
        problems, n = check_rules(sys.argv[2])
        what = "rules"
    else:
        sys.exit(__doc__)
    for p in problems:
        print(f"  {p}")
    if problems:
        sys.exit(1)
    print(f"{n} {what}")


if __name__ == "__main__":
    main()
