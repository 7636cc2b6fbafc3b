#!/usr/bin/env python3
"""FalconPay's rules for deploy/docker-compose.yml, beyond the Compose
specification's schema (which check-jsonschema checks):

    check_compose.py deploy/docker-compose.yml

  * every bind-mounted file or directory exists (relative to the file);
  * the three NATS nodes load compose.conf and accounts.conf, each with its
    own server name and data volume, and every password accounts.conf reads;
  * each actor service runs `falcon run --actors <group>` as NATS user
    <group>, with only its own database URL, against that actor's own
    PostgreSQL service;
  * every falcon service is hardened as on Kubernetes: user 10001,
    read-only root filesystem, all capabilities dropped;
  * published ports are bound to loopback only.

Prints one line per problem; exits 1 if there is any.
"""

import os
import re
import sys

import yaml

GROUPS = ("payment", "risk", "wallet")


def main(path):
    problems = []
    base = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        doc = yaml.safe_load(f)
    services = doc.get("services", {})
    with open(os.path.join(base, "nats", "accounts.conf")) as f:
        password_vars = set(re.findall(r"\$(FALCON_NATS_[A-Z]+_PASSWORD)", f.read()))

    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith((".", "/")) and not os.path.exists(os.path.join(base, src)):
                problems.append(f"{name}: mounts {src}, which does not exist")
        for port in svc.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: port {port} is not bound to 127.0.0.1")

    nats = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("nats:")}
    if len(nats) != 3:
        problems.append(f"{len(nats)} NATS nodes, expected 3")
    names, volumes = set(), set()
    for name, svc in nats.items():
        env = svc.get("environment", {})
        names.add(env.get("NATS_SERVER_NAME"))
        mounts = [v.split(":")[1] for v in svc.get("volumes", []) if isinstance(v, str)]
        volumes.update(v.split(":")[0] for v in svc.get("volumes", [])
                       if isinstance(v, str) and not v.startswith("."))
        for needed in ("/etc/nats/compose.conf", "/etc/nats/accounts.conf", "/data"):
            if needed not in mounts:
                problems.append(f"{name}: nothing mounted at {needed}")
        missing = password_vars - set(env)
        if missing:
            problems.append(f"{name}: no {', '.join(sorted(missing))}")
    if len(names) != len(nats) or len(volumes) != len(nats):
        problems.append("NATS nodes share a server name or a data volume")

    falcon = {n: s for n, s in services.items()
              if str(s.get("image", "")).startswith("falconpay/")}
    for name, svc in falcon.items():
        if str(svc.get("user", "")).split(":")[0] != "10001":
            problems.append(f"{name}: not running as user 10001")
        if svc.get("read_only") is not True:
            problems.append(f"{name}: root filesystem is not read-only")
        if "ALL" not in svc.get("cap_drop", []):
            problems.append(f"{name}: does not drop ALL capabilities")
        env = svc.get("environment", {})
        cmd = svc.get("command", [])
        urls = env.get("FALCON__NATS__URL", "").split(",")
        users = {m.group(1) for u in urls for m in [re.match(r"nats://([^:@]+):", u)] if m}
        dbs = sorted(k for k in env if re.fullmatch(r"FALCON__[A-Z]+__DATABASE_URL", k))
        if cmd[:2] == ["run", "--actors"]:
            group = cmd[2]
            if group not in GROUPS:
                problems.append(f"{name}: runs unknown group {group!r}")
            if users != {group}:
                problems.append(f"{name}: NATS users {sorted(users)}, expected only {group!r}")
            if dbs != [f"FALCON__{group.upper()}__DATABASE_URL"]:
                problems.append(f"{name}: database URLs {dbs}, expected only the {group} actor's")
            elif f"@postgres-{group}:" not in env[dbs[0]]:
                problems.append(f"{name}: database URL does not point at postgres-{group}")
        elif cmd[:2] == ["streams", "apply"]:
            if users != {"operator"}:
                problems.append(f"{name}: streams apply as {sorted(users)}, expected 'operator'")
        else:
            problems.append(f"{name}: unexpected command {cmd}")
    ran = {s.get("command", [None] * 3)[2] for s in falcon.values()
           if s.get("command", [])[:2] == ["run", "--actors"]}
    for g in GROUPS:
        if g not in ran:
            problems.append(f"no service runs the {g} actor group")

    for p in problems:
        print(f"  {p}")
    if problems:
        sys.exit(1)
    print(f"{len(services)} services")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
