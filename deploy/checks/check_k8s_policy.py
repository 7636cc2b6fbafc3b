#!/usr/bin/env python3
"""FalconPay's own rules for its Kubernetes manifests, beyond the API schema
(which kubernetes-validate checks) and across objects.

    check_k8s_policy.py deploy/k8s/*.yaml deploy/k8s/monitoring/*.yaml

Every workload (Deployment, StatefulSet, Job):
  * runs as non-root with the RuntimeDefault seccomp profile, without a
    service account token, with a read-only root filesystem, no privilege
    escalation and every capability dropped (Pod Security `restricted`);
  * sets CPU and memory requests and limits on every container;
  * uses a pinned image tag (not `latest`, not untagged).
Every falcon container:
  * runs as UID 10001 from the one image every manifest names;
  * has no credentials in its NATS URL, and mounts at security.keys_dir
    (FALCON__SECURITY__KEYS_DIR) read-only, whole, a Secret volume the
    falcon user can read (fsGroup 10001, mode at most 0440);
  * runs `falcon run --actors <group>` (Deployments) matching its
    component label, with only its own database URL and the Secret
    falconpay-<group>-keys: that actor's seed and every actor's signing
    key, no other identity's seed (the layout of
    deploy/k8s/generate-secrets.py); or `falcon streams apply` as
    `provisioning` (the Job) with falconpay-provisioning-keys only.
Every actor Deployment:
  * has readiness and liveness probes on /health/ready and /health/live at
    a port the container declares;
  * stops within terminationGracePeriodSeconds > FALCON__SHUTDOWN__GRACE_MS;
  * is covered by a PodDisruptionBudget and a HorizontalPodAutoscaler
    (minReplicas >= 2, maxReplicas <= FALCON__CONSUMER__PARTITIONS: a pod
    beyond that owns no loop) that select it; a group of FIXED_REPLICAS
    (recon) instead by a PodDisruptionBudget and no HPA, with `replicas`
    set, from 1 to its maximum.
Across objects:
  * every Service selects pods and names ports they declare; the
    ServiceMonitor selects Services that have its endpoint port;
  * every ConfigMap referenced is defined here; every Secret referenced is
    one deploy/README.md documents (SECRETS below, and those
    generate-secrets.py writes), with a documented key; Secrets given among
    the files (generate-secrets.py's output, as scripts/validate-deploy.sh
    passes it) hold exactly the files that layout says;
  * each database's NetworkPolicy admits exactly its actor's pods;
  * everything is in the falconpay namespace.

Prints one line per problem; exits 1 if there is any.
"""

import base64
import re
import sys

import yaml

from secrets_layout import generator

NAMESPACE = "falconpay"
FALCON_IMAGE = re.compile(r"^falconpay/falcon:[0-9A-Za-z._-]+$")
FALCON_UID = 10001
GROUPS = ("payment", "risk", "wallet", "recon")
# Groups that run a fixed number of replicas, at most this many, and no
# HorizontalPodAutoscaler: the reconciliation actor reconciles in one pod
# at a time (a lease in its database) and nothing waits for it, so one
# replica is its default, a second one a standby for failover, and more
# would only stand by too.
FIXED_REPLICAS = {"recon": 2}
PROVISIONING = "provisioning"

# What generate-secrets.py writes from `falcon auth init`'s directory, and
# the database passwords deploy/README.md tells the operator to create.
GENERATED = {name: set(files)
             for name, files in generator().layout(list(GROUPS), PROVISIONING).items()}
SECRETS = dict(GENERATED, **{f"falconpay-{g}-db": {"password"} for g in GROUPS})

problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def load(paths):
    docs = []
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    doc["__file"] = path
                    docs.append(doc)
    return docs


def where(doc):
    return f"{doc['__file']} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def env_map(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_workload(doc, config, secrets):
    w = where(doc)
    spec = doc["spec"]["template"]["spec"]
    labels = doc["spec"]["template"]["metadata"].get("labels", {})
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        problem(w, "pod securityContext.runAsNonRoot is not true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problem(w, "pod seccompProfile is not RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        problem(w, "automountServiceAccountToken is not false")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        cw = f"{w} container {c['name']}"
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    problem(cw, f"no {r} {kind[:-1]}")
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(cw, "root filesystem is not read-only")
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(cw, "allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problem(cw, "does not drop ALL capabilities")
        image = c.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            problem(cw, f"image {image!r} has no pinned tag")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and (ref["name"] not in SECRETS or ref["key"] not in SECRETS[ref["name"]]):
                problem(cw, f"secret {ref['name']}/{ref['key']} is not a documented one")
        for src in c.get("envFrom", []):
            name = src.get("configMapRef", {}).get("name")
            if name and name not in config:
                problem(cw, f"ConfigMap {name} is not defined in these manifests")
        if FALCON_IMAGE.match(image) or image.startswith("falconpay/"):
            check_falcon_container(doc, cw, c, psc, labels, config)
            check_keys(doc, cw, c, spec, labels, config, secrets)


def check_keys(doc, cw, c, spec, labels, config, secrets):
    """The keys Secret at security.keys_dir: the right one, read-only,
    readable by the falcon user only."""
    env = env_map(c)
    keys_dir = env.get("FALCON__SECURITY__KEYS_DIR", {}).get("value") or \
        config_value(config, "FALCON__SECURITY__KEYS_DIR")
    if not keys_dir:
        problem(cw, "FALCON__SECURITY__KEYS_DIR is not set (secure mode reads the keys there)")
        return
    mount = next((m for m in c.get("volumeMounts", [])
                  if m.get("mountPath", "").rstrip("/") == keys_dir.rstrip("/")), None)
    if not mount:
        problem(cw, f"nothing mounted at security.keys_dir {keys_dir}")
        return
    if mount.get("readOnly") is not True:
        problem(cw, f"{keys_dir} is not mounted readOnly")
    if mount.get("subPath") or mount.get("subPathExpr"):
        problem(cw, f"{keys_dir} is a subPath mount (it would never see a rotated key)")
    vol = next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), {})
    name = vol.get("secret", {}).get("secretName")
    if doc["kind"] == "Deployment":
        want = f"falconpay-{labels.get('app.kubernetes.io/component')}-keys"
    elif "streams" in c.get("args", []):
        want = f"falconpay-{PROVISIONING}-keys"
    else:
        want = None
    if not name:
        problem(cw, f"{keys_dir} is not a Secret volume")
        return
    if want and name != want:
        problem(cw, f"mounts Secret {name} at {keys_dir}, expected {want}")
    if name not in GENERATED:
        problem(cw, f"Secret {name} is not one generate-secrets.py writes")
    mode = vol["secret"].get("defaultMode", 0o644)
    items = vol["secret"].get("items")
    if items:
        problem(cw, f"Secret {name}: items pick files; mount the whole Secret")
    if mode & 0o137:
        problem(cw, f"Secret {name}: defaultMode {mode:#o} lets others read or anyone write "
                    "(use 0440, or 0400 with fsGroup)")
    psc = spec.get("securityContext", {})
    uid = c.get("securityContext", {}).get("runAsUser", psc.get("runAsUser"))
    if uid != 0 and not (psc.get("fsGroup") == FALCON_UID and mode & 0o040):
        problem(cw, f"Secret {name}: its files are root-owned, so UID {uid} reads them "
                    f"through the group: set fsGroup {FALCON_UID} and mode 0440")
    if secrets and name not in secrets:
        problem(cw, f"Secret {name} is not among the generated Secrets given")


def check_falcon_container(doc, cw, c, psc, labels, config):
    uid = c.get("securityContext", {}).get("runAsUser", psc.get("runAsUser"))
    if uid != FALCON_UID:
        problem(cw, f"runs as UID {uid}, not {FALCON_UID}")
    env = env_map(c)
    if "FALCON__NODE" not in env:
        problem(cw, "FALCON__NODE is not set (the pod name)")
    url = env.get("FALCON__NATS__URL", {}).get("value", "")
    if not url:
        problem(cw, "FALCON__NATS__URL is not set")
    for u in url.split(","):
        if "@" in u.split("//", 1)[-1].split("/", 1)[0]:
            problem(cw, f"NATS URL {u!r} carries credentials: identities come from keys_dir")
    if "NATS_PASSWORD" in env:
        problem(cw, "NATS_PASSWORD is set: identities are nkeys from keys_dir")
    group = labels.get("app.kubernetes.io/component")
    db_vars = sorted(n for n in env if re.fullmatch(r"FALCON__[A-Z]+__DATABASE_URL", n))
    # The database password must be the group's own database's.
    secret_of = {n: e.get("valueFrom", {}).get("secretKeyRef", {}) for n, e in env.items()}
    for n in db_vars:
        actor = n.split("__")[1].lower()
        ref = secret_of.get("DB_PASSWORD", {})
        if "$(DB_PASSWORD)" in env[n].get("value", "") and ref.get("name") != f"falconpay-{actor}-db":
            problem(cw, f"DB_PASSWORD comes from {ref.get('name')}, not falconpay-{actor}-db")
    if doc["kind"] == "Deployment":
        if c.get("args", [])[:3] != ["run", "--actors", group]:
            problem(cw, f"args {c.get('args')} do not run the `{group}` group")
        if "--as" in c.get("args", []):
            problem(cw, "`--as` is not for `falcon run`: each actor connects as itself")
        if db_vars != [f"FALCON__{group.upper()}__DATABASE_URL"]:
            problem(cw, f"database URLs {db_vars}, expected only the {group} actor's")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for kind, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
            probe = c.get(kind, {}).get("httpGet", {})
            if probe.get("path") != path:
                problem(cw, f"{kind} is not an HTTP GET of {path}")
            if probe.get("port") not in ports and probe.get("port") not in ports.values():
                problem(cw, f"{kind} port {probe.get('port')!r} is not a container port")
        listen = config_value(config, "FALCON__HTTP__LISTEN") or ""
        if listen.rsplit(":", 1)[-1] not in {str(p) for p in ports.values()}:
            problem(cw, f"FALCON__HTTP__LISTEN {listen!r} is not a declared container port")
        grace_ms = int(config_value(config, "FALCON__SHUTDOWN__GRACE_MS") or 0)
        tgps = doc["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        if tgps * 1000 <= grace_ms:
            problem(cw, f"terminationGracePeriodSeconds {tgps} is not above the "
                        f"{grace_ms} ms shutdown grace")
    else:
        if db_vars:
            problem(cw, f"a {doc['kind']} that needs no database has {db_vars}")
        args = c.get("args", [])
        if args[-2:] == ["streams", "apply"]:
            as_ = args[args.index("--as") + 1] if "--as" in args else PROVISIONING
            if as_ != PROVISIONING:
                problem(cw, f"streams apply as {as_!r}: only {PROVISIONING!r} may provision")


def config_value(config, key):
    for cm in config.values():
        if key in cm.get("data", {}):
            return cm["data"][key]
    return None


def check_secrets(secrets):
    """Generated Secrets: exactly the files the layout says, and an actor's
    Secret holds no seed but its own."""
    for name, doc in secrets.items():
        w = where(doc)
        files = set(doc.get("data", {})) | set(doc.get("stringData", {}))
        want = SECRETS.get(name)
        if want is None:
            if not re.fullmatch(r"falconpay-[A-Za-z0-9_-]+-identity", name):
                problem(w, "not a Secret generate-secrets.py writes")
            continue
        if files != want:
            problem(w, f"holds {sorted(files)}, expected {sorted(want)}")
        seeds = {f for f in files if f.endswith(".nk")}
        own = name.removeprefix("falconpay-").removesuffix("-keys")
        if seeds - {f"{own}.nk"}:
            problem(w, f"holds another identity's seed: {sorted(seeds - {f'{own}.nk'})}")
        for f, value in doc.get("data", {}).items():
            try:
                if not base64.b64decode(value, validate=True).strip():
                    problem(w, f"{f} is empty")
            except ValueError:
                problem(w, f"{f} is not base64")


def main(paths):
    docs = load(paths)
    config = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    check_secrets(secrets)
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    images = set()
    for d in docs:
        ns = d["metadata"].get("namespace")
        if d["kind"] != "Namespace" and ns != NAMESPACE:
            problem(where(d), f"namespace {ns!r}, not {NAMESPACE}")
    for d in workloads:
        check_workload(d, config, secrets)
        for c in d["spec"]["template"]["spec"]["containers"]:
            if c["image"].startswith("falconpay/"):
                images.add(c["image"])
    if len(images) > 1:
        problem("manifests", f"falcon pods use different images: {sorted(images)}")

    pods = [(d, d["spec"]["template"]["metadata"].get("labels", {})) for d in workloads]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    found = {d["metadata"]["labels"].get("app.kubernetes.io/component") for d in deployments}
    for g in GROUPS:
        if g not in found:
            problem("manifests", f"no Deployment for the `{g}` actor group")
    for d in deployments:
        labels = d["spec"]["template"]["metadata"]["labels"]
        if not selects(d["spec"]["selector"]["matchLabels"], labels):
            problem(where(d), "selector does not match its own pod labels")
        pdbs = [p for p in docs if p["kind"] == "PodDisruptionBudget"
                and selects(p["spec"]["selector"].get("matchLabels"), labels)]
        if len(pdbs) != 1:
            problem(where(d), f"{len(pdbs)} PodDisruptionBudgets select it, expected 1")
        hpas = [h for h in docs if h["kind"] == "HorizontalPodAutoscaler"
                and h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                    "name": d["metadata"]["name"]}]
        group = labels.get("app.kubernetes.io/component")
        if group in FIXED_REPLICAS:
            most = FIXED_REPLICAS[group]
            if hpas:
                problem(where(d), f"{len(hpas)} HorizontalPodAutoscalers target it; the {group} "
                                  "group runs a fixed number of replicas")
            n = d["spec"].get("replicas")
            if not isinstance(n, int) or not 1 <= n <= most:
                problem(where(d), f"replicas {n!r}: the {group} group needs it set, 1 to {most}")
            continue
        if len(hpas) != 1:
            problem(where(d), f"{len(hpas)} HorizontalPodAutoscalers target it, expected 1")
        elif hpas[0]["spec"].get("minReplicas", 1) < 2:
            problem(where(hpas[0]), "minReplicas below 2")
        else:
            # Each consumer loop has one owner: a pod beyond the partitions'
            # count owns none of an actor's event loops and only stands by.
            partitions = int(config_value(config, "FALCON__CONSUMER__PARTITIONS") or 1)
            most = hpas[0]["spec"].get("maxReplicas", 1)
            if most > partitions:
                problem(where(hpas[0]), f"maxReplicas {most} above consumer.partitions {partitions}: "
                        "the pods beyond it would own no loop")
        if "replicas" in d["spec"] and hpas:
            problem(where(d), "sets replicas although an HPA owns the count")

    services = [d for d in docs if d["kind"] == "Service"]
    for s in services:
        sel = s["spec"].get("selector", {})
        matched = [(d, l) for d, l in pods if selects(sel, l)]
        if not matched:
            problem(where(s), "selects no pods")
        for port in s["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for d, _ in matched:
                declared = {p.get("name") for c in d["spec"]["template"]["spec"]["containers"]
                            for p in c.get("ports", [])}
                declared |= {p.get("containerPort") for c in d["spec"]["template"]["spec"]["containers"]
                             for p in c.get("ports", [])}
                if target not in declared:
                    problem(where(s), f"targetPort {target!r} is not declared by {where(d)}")

    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        sel = sm["spec"]["selector"].get("matchLabels", {})
        matched = [s for s in services if selects(sel, s["metadata"].get("labels", {}))]
        if not matched:
            problem(where(sm), "selects no Service")
        for ep in sm["spec"]["endpoints"]:
            for s in matched:
                if ep.get("port") not in {p.get("name") for p in s["spec"]["ports"]}:
                    problem(where(sm), f"Service {s['metadata']['name']} has no port {ep.get('port')!r}")
        job_label = sm["spec"].get("jobLabel")
        for s in matched:
            if job_label and s["metadata"]["labels"].get(job_label) != "falconpay":
                problem(where(sm), f"jobLabel {job_label} does not make job=\"falconpay\" "
                                   f"for Service {s['metadata']['name']} (alert rules select on it)")

    for g in GROUPS:
        db = [d for d, l in pods if d["kind"] == "StatefulSet"
              and l.get("app.kubernetes.io/instance") == f"falconpay-pg-{g}"]
        if len(db) != 1:
            problem("manifests", f"{len(db)} databases for the `{g}` actor, expected 1")
            continue
        db_labels = db[0]["spec"]["template"]["metadata"]["labels"]
        policies = [p for p in docs if p["kind"] == "NetworkPolicy"
                    and selects(p["spec"]["podSelector"].get("matchLabels"), db_labels)]
        if len(policies) != 1:
            problem(where(db[0]), f"{len(policies)} NetworkPolicies select it, expected 1")
            continue
        sources = [f.get("podSelector", {}).get("matchLabels", {})
                   for rule in policies[0]["spec"].get("ingress", []) for f in rule.get("from", [])]
        allowed = {l.get("app.kubernetes.io/component") for l in sources}
        if allowed != {g} or any(l.get("app.kubernetes.io/name") != "falcon" for l in sources):
            problem(where(policies[0]), f"admits {sorted(map(str, allowed))}, expected only the {g} pods")

    for p in problems:
        print(f"  {p}")
    if problems:
        sys.exit(1)
    print(f"{len(docs)} objects")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
