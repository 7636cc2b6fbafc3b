#!/usr/bin/env python3
"""Checks deploy/k8s/nats/values.yaml (values of the official NATS Helm
chart, 1.x) without helm:

    check_nats_values.py VALUES.yaml NATS_AUTH.conf NATS_SERVER_BINARY

NATS_AUTH.conf is a `nats-auth.conf` that `falcon auth init` generated
(scripts/validate-deploy.sh makes one in a temporary directory).

  * a three-node cluster with JetStream on persistent file storage, a
    PodDisruptionBudget, the Prometheus exporter (it reads the monitoring
    port, so no system-account user is needed) and its PodMonitor;
  * the authorization include resolves: one `$include` of `nats-auth.conf`
    (relative to the chart's /etc/nats-config) lands in a directory that
    container.patch mounts read-only, whole (no subPath: a subPath mount
    never sees the Secret change, so the reloader would never reload it),
    from a volume that podTemplate.patch defines from the Secret
    falconpay-nats-auth, the one deploy/k8s/generate-secrets.py writes, holding the
    key nats-auth.conf;
  * nothing of the hand-written set-up is left: no accounts, no password
    variables, no secret other than falconpay-nats-auth;
  * the nats container has resource requests and limits;
  * and the server config these values amount to (cluster, JetStream,
    monitoring, the merged settings, the include at the same relative path
    with the generated file there) passes `nats-server -t`.

`render()` writes that server config for nats_permissions.py, which starts
it (as one node) and proves the permissions on it.

Prints one line per problem; exits 1 if there is any.
"""

import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

from secrets_layout import generator

CONFIG_DIR = "/etc/nats-config"   # where the chart mounts nats.conf
SECRET = "falconpay-nats-auth"
AUTH_FILE = "nats-auth.conf"


def dig(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def load(values_path):
    with open(values_path) as f:
        return yaml.safe_load(f)


def includes(v):
    """[(include as written, absolute target in the pod)] of config.merge."""
    merge = dig(v, "config", "merge") or {}
    return [(path, posixpath.normpath(posixpath.join(CONFIG_DIR, path)))
            for key, path in sorted(merge.items()) if key.endswith("$include")]


def render(v, auth_conf, root, port=4222, http_port=8222, store_dir="/data", cluster=True):
    """Writes under ROOT the nats.conf these values amount to (at
    ROOT/etc/nats-config/nats.conf) and AUTH_CONF at every include's
    target; returns the nats.conf path. `cluster=False`, another port and
    store directory: the same server as one node, to run here."""
    conf_dir = os.path.join(root, CONFIG_DIR.lstrip("/"))
    os.makedirs(conf_dir, exist_ok=True)
    lines = []
    for inc, target in includes(v):
        dest = os.path.join(root, target.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy(auth_conf, dest)
        lines.append(f"include {inc}")
    js = v["config"]["jetstream"]
    lines += [
        "server_name: $POD_NAME",
        f"port: {port}",
        "lame_duck_duration: 30s",
        "lame_duck_grace_period: 10s",
        f"jetstream {{ store_dir: {store_dir!r}, "
        f"max_memory_store: {dig(js, 'memoryStore', 'maxSize') or '0'} }}",
    ]
    if http_port:
        lines.append(f"http_port: {http_port}")
    if cluster:
        routes = ", ".join(f"nats://nats-{i}.nats-headless:6222" for i in range(3))
        lines.append(f"cluster {{ name: nats, port: 6222, no_advertise: true, routes: [{routes}] }}")
    for key, value in (dig(v, "config", "merge") or {}).items():
        if key.endswith("$include"):
            continue
        m = re.fullmatch(r"<<\s*(.*?)\s*>>", str(value))
        lines.append(f"{key}: {m.group(1) if m else value}")
    path = os.path.join(conf_dir, "nats.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(values_path, auth_path, server):
    problems = []
    v = load(values_path)

    if dig(v, "config", "cluster", "enabled") is not True:
        problems.append("config.cluster.enabled is not true")
    if dig(v, "config", "cluster", "replicas") != 3:
        problems.append("config.cluster.replicas is not 3")
    if dig(v, "config", "jetstream", "enabled") is not True:
        problems.append("config.jetstream.enabled is not true")
    if dig(v, "config", "jetstream", "fileStore", "enabled") is False or \
            dig(v, "config", "jetstream", "fileStore", "pvc", "enabled") is False:
        problems.append("JetStream file storage or its PVC is disabled")
    if not dig(v, "config", "jetstream", "fileStore", "pvc", "size"):
        problems.append("config.jetstream.fileStore.pvc.size is not set")
    if dig(v, "podDisruptionBudget", "enabled") is not True:
        problems.append("podDisruptionBudget.enabled is not true")
    if dig(v, "promExporter", "enabled") is not True or \
            dig(v, "promExporter", "podMonitor", "enabled") is not True:
        problems.append("promExporter and its podMonitor are not both enabled")
    if dig(v, "config", "monitor", "enabled") is not True:
        problems.append("config.monitor.enabled is not true (the exporter and probes read it)")
    res = dig(v, "container", "merge", "resources") or {}
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(kind) or {}):
                problems.append(f"container.merge.resources has no {r} {kind[:-1]}")

    # The include, the mount, the volume, the Secret.
    merge = dig(v, "config", "merge") or {}
    for key in ("accounts", "authorization", "system_account", "no_auth_user"):
        if key in merge:
            problems.append(f"config.merge.{key}: the authorization is the generated "
                            f"{AUTH_FILE}, nothing else")
    incs = includes(v)
    if [posixpath.basename(t) for _, t in incs] != [AUTH_FILE]:
        problems.append(f"config.merge has {[i for i, _ in incs]} as $include, "
                        f"expected exactly one of {AUTH_FILE}")
    mounts = [p.get("value", {}) for p in dig(v, "container", "patch") or []
              if p.get("op") == "add" and p.get("path") == "/volumeMounts/-"]
    volumes = {p["value"]["name"]: p["value"] for p in dig(v, "podTemplate", "patch") or []
               if p.get("op") == "add" and p.get("path") == "/spec/volumes/-"}
    for inc, target in incs:
        mount = next((m for m in mounts
                      if posixpath.dirname(target) == posixpath.normpath(m.get("mountPath", ""))), None)
        if not mount:
            problems.append(f"include {inc} -> {target}: no container.patch mounts its directory")
            continue
        if mount.get("readOnly") is not True:
            problems.append(f"mount {mount.get('mountPath')} is not readOnly")
        if mount.get("subPath"):
            problems.append(f"mount {mount.get('mountPath')} uses subPath: a Secret change "
                            "would never reach the server")
        if not mount.get("mountPath", "").startswith("/etc/"):
            problems.append(f"mount {mount.get('mountPath')} is outside /etc/: the chart's "
                            "reloader (natsVolumeMountPrefixes) would not see it")
        vol = volumes.get(mount.get("name"))
        name = dig(vol, "secret", "secretName")
        if name != SECRET:
            problems.append(f"include {inc}: volume {mount.get('name')!r} is not the Secret "
                            f"{SECRET} (podTemplate.patch), got {vol}")
            continue
        items = dig(vol, "secret", "items")
        if items and not any(i.get("key") == AUTH_FILE and i.get("path") == AUTH_FILE
                             for i in items):
            problems.append(f"volume {mount.get('name')}: items do not put {AUTH_FILE} "
                            f"at {AUTH_FILE}")
        mode = dig(vol, "secret", "defaultMode")
        if mode is None or mode & 0o037:
            problems.append(f"volume {mount.get('name')}: defaultMode {mode!r} lets others "
                            "read or anyone write the authorization (use 0440 or less)")
    if generator().layout([]).get(SECRET) != [AUTH_FILE]:
        problems.append(f"deploy/k8s/generate-secrets.py does not write {SECRET} with {AUTH_FILE}")

    # No password variables, no other Secret.
    env = dig(v, "container", "env") or {}
    for name, value in env.items():
        ref = dig(value, "valueFrom", "secretKeyRef")
        if ref or re.search(r"PASSWORD", name):
            problems.append(f"container.env.{name}: the generated authorization needs no "
                            "password variable")

    # The server config these values amount to, checked by nats-server.
    if incs and not problems:
        work = tempfile.mkdtemp(prefix="falcon-nats-values-")
        try:
            conf = render(v, auth_path, work)
            run = subprocess.run([server, "-t", "-c", conf],
                                 env=dict(os.environ, POD_NAME="nats-0"),
                                 capture_output=True, text=True, timeout=60)
            if run.returncode != 0:
                problems.append("nats-server -t on the rendered config: " +
                                (run.stderr or run.stdout).strip())
        finally:
            shutil.rmtree(work, ignore_errors=True)

    for p in problems:
        print(f"  {p}")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
