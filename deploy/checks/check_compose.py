#!/usr/bin/env python3
"""FalconPay's rules for deploy/docker-compose.yml, beyond the Compose
specification's schema (which check-jsonschema checks):

    check_compose.py deploy/docker-compose.yml

  * every bind-mounted file or directory exists (relative to the file);
  * one one-shot service of the falcon image runs `falcon auth init --dir
    D` into a named volume mounted writable at D, a directory the image
    creates for user 10001 (deploy/Dockerfile), so that the unprivileged
    user can write the new volume;
  * the three NATS nodes load compose.conf, whose `include` of
    nats-auth.conf resolves into that volume, mounted read-only; each waits
    for the keys service to complete (service_completed_successfully) and
    has its own server name and data volume; no password variables;
  * every other falcon service mounts the keys volume read-only at its
    FALCON__SECURITY__KEYS_DIR, starts after the keys exist (through its
    dependencies), and has no credentials in its NATS URL;
  * each actor service runs `falcon run --actors <group>` (no `--as`: it
    connects as <group>), with only its own database URL, against that
    actor's own PostgreSQL service; `streams apply` runs as provisioning;
  * every falcon service is hardened as on Kubernetes: user 10001,
    read-only root filesystem, all capabilities dropped;
  * published ports are bound to loopback only.

Prints one line per problem; exits 1 if there is any.
"""

import os
import posixpath
import re
import sys

import yaml

GROUPS = ("payment", "risk", "wallet", "recon")
PROVISIONING = "provisioning"
AUTH_FILE = "nats-auth.conf"


def mounts(svc):
    """[(source, target, read-only)] of a service's volumes (short syntax)."""
    out = []
    for vol in svc.get("volumes", []):
        if isinstance(vol, str):
            parts = vol.split(":")
            out.append((parts[0], parts[1] if len(parts) > 1 else parts[0],
                        len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            out.append((vol.get("source", ""), vol.get("target", ""), vol.get("read_only", False)))
    return out


def image_dirs_of_user(dockerfile, uid="10001"):
    """Directories the final stage creates owned by UID (install -d -o UID)."""
    with open(dockerfile) as f:
        text = f.read().replace("\\\n", " ")
    final = text.rsplit("\nFROM ", 1)[-1]
    dirs = set()
    for m in re.finditer(r"install\s+-d\s+((?:-\S+\s+\S+\s+)*)(\S+)", final):
        if re.search(rf"-o\s+{uid}\b", m.group(1)):
            dirs.add(m.group(2))
    return dirs


def main(path):
    problems = []
    base = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        doc = yaml.safe_load(f)
    services = doc.get("services", {})
    named_volumes = set(doc.get("volumes") or {})

    for name, svc in services.items():
        for src, _, _ in mounts(svc):
            if src.startswith((".", "/")) and not os.path.exists(os.path.join(base, src)):
                problems.append(f"{name}: mounts {src}, which does not exist")
        for port in svc.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: port {port} is not bound to 127.0.0.1")
        env = svc.get("environment", {}) or {}
        for var in env:
            if re.fullmatch(r"FALCON_NATS_[A-Z]+_PASSWORD", var):
                problems.append(f"{name}: {var}: identities are generated nkeys, not passwords")

    falcon = {n: s for n, s in services.items()
              if str(s.get("image", "")).startswith("falconpay/")}
    nats = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("nats:")}

    # The keys service.
    keys = {n: s for n, s in falcon.items() if s.get("command", [])[:2] == ["auth", "init"]}
    keys_volume = None
    if len(keys) != 1:
        problems.append(f"{len(keys)} services run `falcon auth init`, expected 1")
    for name, svc in keys.items():
        cmd = svc["command"]
        target = cmd[cmd.index("--dir") + 1] if "--dir" in cmd else None
        if not target:
            problems.append(f"{name}: `auth init` without --dir")
            continue
        if svc.get("restart") != "no":
            problems.append(f"{name}: a one-shot service needs restart: \"no\"")
        vols = [(s, ro) for s, t, ro in mounts(svc) if t.rstrip("/") == target.rstrip("/")]
        if not vols or vols[0][0] not in named_volumes:
            problems.append(f"{name}: no named volume mounted at --dir {target}")
            continue
        if vols[0][1]:
            problems.append(f"{name}: {target} is mounted read-only; auth init writes it")
        keys_volume = vols[0][0]
        owned = image_dirs_of_user(os.path.join(base, "Dockerfile"))
        if target.rstrip("/") not in owned:
            problems.append(f"{name}: --dir {target} is not a directory the image creates for "
                            f"user 10001 ({sorted(owned)}): the new volume would be root's")
    keys_name = next(iter(keys), None)

    # NATS nodes.
    if len(nats) != 3:
        problems.append(f"{len(nats)} NATS nodes, expected 3")
    names, data = set(), set()
    for name, svc in nats.items():
        env = svc.get("environment", {}) or {}
        names.add(env.get("NATS_SERVER_NAME"))
        ms = mounts(svc)
        data.update(s for s, t, _ in ms if t == "/data")
        cmd = svc.get("command", [])
        conf = cmd[cmd.index("-c") + 1] if "-c" in cmd else None
        src = next((s for s, t, _ in ms if t == conf), None)
        if not conf or not src or not src.startswith("."):
            problems.append(f"{name}: its config {conf} is not a file of deploy/")
            continue
        with open(os.path.join(base, src)) as f:
            incs = re.findall(r"^\s*include\s+\"?([^\"\s]+)\"?", f.read(), re.M)
        auth = [i for i in incs if posixpath.basename(i) == AUTH_FILE]
        if len(auth) != 1 or len(incs) != 1:
            problems.append(f"{name}: {src} includes {incs}, expected only the generated {AUTH_FILE}")
            continue
        target = posixpath.normpath(posixpath.join(posixpath.dirname(conf), auth[0]))
        mount = next(((s, t, ro) for s, t, ro in ms
                      if posixpath.dirname(target) == posixpath.normpath(t)), None)
        if not mount or mount[0] != keys_volume:
            problems.append(f"{name}: {target} is not in the keys volume {keys_volume!r}")
        elif not mount[2]:
            problems.append(f"{name}: the keys volume is not mounted read-only")
        dep = (svc.get("depends_on") or {}).get(keys_name) if isinstance(
            svc.get("depends_on"), dict) else None
        if not dep or dep.get("condition") != "service_completed_successfully":
            problems.append(f"{name}: does not wait for {keys_name} "
                            "(condition: service_completed_successfully)")
    if len(names) != len(nats) or len(data) != len(nats):
        problems.append("NATS nodes share a server name or a data volume")

    def after_keys(name, seen=()):
        deps = services.get(name, {}).get("depends_on") or {}
        deps = deps if isinstance(deps, dict) else {d: {} for d in deps}
        if keys_name in deps:
            return True
        return any(after_keys(d, seen + (name,)) for d in deps if d not in seen)

    for name, svc in falcon.items():
        if str(svc.get("user", "")).split(":")[0] != "10001":
            problems.append(f"{name}: not running as user 10001")
        if svc.get("read_only") is not True:
            problems.append(f"{name}: root filesystem is not read-only")
        if "ALL" not in svc.get("cap_drop", []):
            problems.append(f"{name}: does not drop ALL capabilities")
        if name in keys:
            continue
        env = svc.get("environment", {}) or {}
        cmd = svc.get("command", [])
        keys_dir = env.get("FALCON__SECURITY__KEYS_DIR")
        if not keys_dir:
            problems.append(f"{name}: FALCON__SECURITY__KEYS_DIR is not set")
        else:
            mount = next(((s, ro) for s, t, ro in mounts(svc)
                          if t.rstrip("/") == keys_dir.rstrip("/")), None)
            if not mount or mount[0] != keys_volume:
                problems.append(f"{name}: the keys volume is not mounted at {keys_dir}")
            elif not mount[1]:
                problems.append(f"{name}: the keys volume is not mounted read-only")
        if not after_keys(name):
            problems.append(f"{name}: does not start after {keys_name} (depends_on)")
        urls = str(env.get("FALCON__NATS__URL", "")).split(",")
        if not urls[0]:
            problems.append(f"{name}: FALCON__NATS__URL is not set")
        for u in urls:
            if "@" in u.split("//", 1)[-1].split("/", 1)[0]:
                problems.append(f"{name}: NATS URL {u!r} carries credentials")
        dbs = sorted(k for k in env if re.fullmatch(r"FALCON__[A-Z]+__DATABASE_URL", k))
        if cmd[:2] == ["run", "--actors"]:
            group = cmd[2]
            if group not in GROUPS:
                problems.append(f"{name}: runs unknown group {group!r}")
            if "--as" in cmd:
                problems.append(f"{name}: `--as` is not for `falcon run`")
            if dbs != [f"FALCON__{group.upper()}__DATABASE_URL"]:
                problems.append(f"{name}: database URLs {dbs}, expected only the {group} actor's")
            elif f"@postgres-{group}:" not in env[dbs[0]]:
                problems.append(f"{name}: database URL does not point at postgres-{group}")
        elif cmd[-2:] == ["streams", "apply"]:
            as_ = cmd[cmd.index("--as") + 1] if "--as" in cmd else PROVISIONING
            if as_ != PROVISIONING:
                problems.append(f"{name}: streams apply as {as_!r}, expected {PROVISIONING!r}")
            if dbs:
                problems.append(f"{name}: streams apply needs no database, has {dbs}")
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
