#!/usr/bin/env python3
"""Checks deploy/k8s/nats/values.yaml (values of the official NATS Helm
chart, 1.x) without helm:

    check_nats_values.py VALUES.yaml ACCOUNTS.conf NATS_SERVER_BINARY

  * a three-node cluster with JetStream on persistent file storage, a
    PodDisruptionBudget, the Prometheus exporter and its PodMonitor;
  * the accounts include resolves: the `$include` path (relative to the
    chart's /etc/nats-config) lands in a directory that container.patch
    mounts, from a volume that podTemplate.patch defines from a ConfigMap;
  * every password variable accounts.conf reads is in container.env, from
    the Secret falconpay-nats-users under the user's own key;
  * the nats container has resource requests and limits;
  * and the server config these values amount to (cluster, JetStream,
    monitoring, the merged settings, the include at the same relative path)
    passes `nats-server -t`, with the passwords set as the chart's pods
    would have them.

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

CONFIG_DIR = "/etc/nats-config"   # where the chart mounts nats.conf
SECRET = "falconpay-nats-users"


def dig(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def main(values_path, accounts_path, server):
    problems = []
    with open(values_path) as f:
        v = yaml.safe_load(f)
    with open(accounts_path) as f:
        accounts = f.read()

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
    res = dig(v, "container", "merge", "resources") or {}
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(kind) or {}):
                problems.append(f"container.merge.resources has no {r} {kind[:-1]}")

    # The include, the mount, the volume, the ConfigMap.
    merge = dig(v, "config", "merge") or {}
    includes = [path for key, path in sorted(merge.items()) if key.endswith("$include")]
    if not includes:
        problems.append("config.merge has no $include of the accounts")
    mounts = [p.get("value", {}) for p in dig(v, "container", "patch") or []
              if p.get("op") == "add" and p.get("path") == "/volumeMounts/-"]
    volumes = {p["value"]["name"]: p["value"] for p in dig(v, "podTemplate", "patch") or []
               if p.get("op") == "add" and p.get("path") == "/spec/volumes/-"}
    resolved = []
    for inc in includes:
        target = posixpath.normpath(posixpath.join(CONFIG_DIR, inc))
        mount = next((m for m in mounts
                      if posixpath.dirname(target) == posixpath.normpath(m.get("mountPath", ""))), None)
        if not mount:
            problems.append(f"include {inc} -> {target}: no container.patch mounts its directory")
            continue
        vol = volumes.get(mount.get("name"))
        if not vol or not dig(vol, "configMap", "name"):
            problems.append(f"include {inc}: volume {mount.get('name')!r} is not a ConfigMap "
                            "volume added by podTemplate.patch")
            continue
        resolved.append((inc, target))

    # Passwords.
    env = dig(v, "container", "env") or {}
    for var in sorted(set(re.findall(r"\$(FALCON_NATS_([A-Z]+)_PASSWORD)", accounts))):
        name, user = var
        ref = dig(env.get(name), "valueFrom", "secretKeyRef") or {}
        if ref.get("name") != SECRET or ref.get("key") != user.lower():
            problems.append(f"container.env.{name} is not secretKeyRef {SECRET}/{user.lower()}")

    # The server config these values amount to, checked by nats-server.
    if resolved and not problems:
        work = tempfile.mkdtemp(prefix="falcon-nats-values-")
        try:
            conf_dir = os.path.join(work, CONFIG_DIR.lstrip("/"))
            os.makedirs(conf_dir)
            for inc, target in resolved:
                dest = os.path.join(work, target.lstrip("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copy(accounts_path, dest)
            routes = ", ".join(f"nats://nats-{i}.nats-headless:6222" for i in range(3))
            js = v["config"]["jetstream"]
            lines = [f"include {inc}" for inc, _ in resolved] + [
                "server_name: $POD_NAME",
                "port: 4222",
                "http_port: 8222",
                "lame_duck_duration: 30s",
                "lame_duck_grace_period: 10s",
                f"cluster {{ name: nats, port: 6222, no_advertise: true, routes: [{routes}] }}",
                "jetstream { store_dir: /data, "
                f"max_memory_store: {dig(js, 'memoryStore', 'maxSize') or '0'} }}",
            ]
            for key, value in merge.items():
                if key.endswith("$include"):
                    continue
                m = re.fullmatch(r"<<\s*(.*?)\s*>>", str(value))
                lines.append(f"{key}: {m.group(1) if m else value}")
            with open(os.path.join(conf_dir, "nats.conf"), "w") as f:
                f.write("\n".join(lines) + "\n")
            child_env = dict(os.environ, POD_NAME="nats-0")
            for var in set(re.findall(r"\$(FALCON_NATS_[A-Z]+_PASSWORD)", accounts)):
                child_env[var] = "check"
            run = subprocess.run([server, "-t", "-c", os.path.join(conf_dir, "nats.conf")],
                                 env=child_env, capture_output=True, text=True, timeout=60)
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
