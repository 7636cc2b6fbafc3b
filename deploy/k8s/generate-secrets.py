#!/usr/bin/env python3
"""Kubernetes Secrets from the keys `falcon auth init` writes.

    python3 deploy/k8s/generate-secrets.py KEYS_DIR > falconpay-secrets.yaml
    python3 deploy/k8s/generate-secrets.py --falcon falcon [--client NAME]... \\
        [--password-client NAME]... KEYS_DIR | kubectl apply -f -

KEYS_DIR is the directory `falcon auth init --dir KEYS_DIR` filled. With
`--falcon BIN` this first runs `BIN auth init --dir KEYS_DIR`, passing again
every client whose seed (`<name>.nk`) or password (`<name>.password`) is
already there plus the `--client`/`--password-client` names given (`auth
init` itself also keeps every client already in the directory, and every
existing seed and key), and refusing a name that is both.

Writes, to stdout or to `-o FILE` (created owner-only), one YAML stream of
Secrets in the namespace `falconpay` (standard library only, no kubectl):

  falconpay-<actor>-keys       for each actor (one `<actor>.key` in KEYS_DIR
                               each: payment, risk, wallet, recon): the
                               actor's own seed `<actor>.nk` and every
                               actor's signing key `<actor>.key` (its own
                               signs; all verify). No other identity's seed:
                               mounted by that actor group's pods only
                               (40-43-*.yaml).
  falconpay-provisioning-keys  `provisioning.nk` only: the streams Job
                               (30-streams-job.yaml), `falcon streams apply`.
  falconpay-nats-auth          `nats-auth.conf`: the servers' authorization
                               (users, public nkeys, permissions), included
                               by the NATS chart values (nats/values.yaml).
  falconpay-<name>-identity    with `--client-secret NAME` (repeatable): that
                               client's `<name>.nk` or `<name>.password`,
                               for an application running in the cluster.

The treasury's and the operator's seeds are never written into a Secret:
they stay with the people who deposit and operate (the `falcon` CLI with
`security.keys_dir` pointing at KEYS_DIR, or a copy holding only theirs).

The output holds secrets: pipe it to `kubectl apply -f -`, or write it with
`-o` outside the repository; never commit it. Exits 1 with a message when
a file it needs is missing.
"""

import argparse
import base64
import json
import os
import re
import subprocess
import sys

NAMESPACE = "falconpay"
PROVISIONING = "provisioning"
# Identities auth init always issues that are not clients (settings
# defaults: security.provisioning, .treasury, .operator).
ROLES = ("provisioning", "treasury", "operator")
SERVER_CONF = "nats-auth.conf"
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def actors(keys_dir):
    """The actors: one signing key `<actor>.key` each."""
    return sorted(f[:-4] for f in os.listdir(keys_dir) if f.endswith(".key"))


def layout(actor_names, provisioning=PROVISIONING):
    """{secret name: [file names]}: what each Secret holds (the manifests
    mount them; check_k8s_policy.py checks them against this)."""
    keys = [f"{a}.key" for a in actor_names]
    out = {f"falconpay-{a}-keys": [f"{a}.nk"] + keys for a in actor_names}
    out[f"falconpay-{provisioning}-keys"] = [f"{provisioning}.nk"]
    out["falconpay-nats-auth"] = [SERVER_CONF]
    return out


def existing_clients(keys_dir, provisioning=PROVISIONING):
    """(nkey clients, password clients) already in KEYS_DIR."""
    skip = set(actors(keys_dir)) | set(ROLES) | {provisioning}
    nkey, password = [], []
    for f in sorted(os.listdir(keys_dir)):
        stem, ext = os.path.splitext(f)
        if stem in skip or not NAME.match(stem):
            continue
        if ext == ".nk":
            nkey.append(stem)
        elif ext == ".password":
            password.append(stem)
    return nkey, password


def configured_partitions():
    """consumer.partitions as the cluster runs it: FALCON__CONSUMER__PARTITIONS
    in 10-config.yaml beside this script (1 when it is not set there)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "10-config.yaml")
    try:
        with open(path) as fh:
            m = re.search(r'^\s*FALCON__CONSUMER__PARTITIONS:\s*"?(\d+)"?\s*$', fh.read(), re.M)
    except OSError:
        return 1
    return int(m.group(1)) if m else 1


def check_partitions(keys_dir, partitions):
    """The permissions name each partition's durables: a nats-auth.conf made
    for fewer partitions than the pods run would refuse their pulls."""
    path = os.path.join(keys_dir, SERVER_CONF)
    try:
        with open(path) as fh:
            conf = fh.read()
    except OSError:
        return  # reported as a missing file with the Secrets
    last = f"FALCON_EVT.risk-evt-{partitions - 1}"
    if last not in conf:
        sys.exit(f"generate-secrets.py: {path} does not name partition {partitions - 1}'s consumers "
                 f"(10-config.yaml sets consumer.partitions = {partitions}); run it again with --falcon BIN "
                 f"(it passes the partitions to auth init), or `FALCON__CONSUMER__PARTITIONS={partitions} "
                 f"falcon auth init --dir {keys_dir}`")


def run_auth_init(falcon, keys_dir, clients, password_clients, provisioning):
    old_nkey, old_password = (existing_clients(keys_dir, provisioning)
                              if os.path.isdir(keys_dir) else ([], []))
    nkey = sorted(set(old_nkey) | set(clients))
    password = sorted(set(old_password) | set(password_clients))
    both = set(nkey) & set(password)
    if both:
        sys.exit(f"generate-secrets.py: {', '.join(sorted(both))}: both an nkey and a password client")
    cmd = [falcon, "auth", "init", "--dir", keys_dir]
    for c in nkey:
        cmd += ["--client", c]
    for c in password:
        cmd += ["--password-client", c]
    # The permissions name each partition's durables: the partitions the
    # pods run with (10-config.yaml).
    env = dict(os.environ, FALCON__CONSUMER__PARTITIONS=str(configured_partitions()))
    # Its table goes to stderr: stdout is the Secrets.
    run = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env)
    if run.returncode != 0:
        sys.exit(f"generate-secrets.py: {' '.join(cmd)} failed (exit {run.returncode})")


def secret(name, files, keys_dir):
    data = {}
    for f in files:
        path = os.path.join(keys_dir, f)
        if not os.path.isfile(path):
            sys.exit(f"generate-secrets.py: {path} is missing; run `falcon auth init --dir {keys_dir}` "
                     "(with the same --client names as before)")
        with open(path, "rb") as fh:
            data[f] = base64.b64encode(fh.read()).decode()
    lines = [
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        f"  name: {name}",
        f"  namespace: {NAMESPACE}",
        "  labels:",
        "    app.kubernetes.io/part-of: falconpay",
        "  annotations:",
        '    falconpay/generated-by: "deploy/k8s/generate-secrets.py from falcon auth init"',
        "type: Opaque",
        "data:",
    ] + [f"  {json.dumps(k)}: {v}" for k, v in sorted(data.items())]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(
        description="Kubernetes Secrets from falcon auth init's keys (see the module doc).")
    p.add_argument("keys_dir", metavar="KEYS_DIR")
    p.add_argument("--falcon", metavar="BIN",
                   help="run BIN auth init --dir KEYS_DIR first (keeps existing keys and clients)")
    p.add_argument("--client", action="append", default=[], metavar="NAME",
                   help="with --falcon: a new nkey client (repeatable)")
    p.add_argument("--password-client", action="append", default=[], metavar="NAME",
                   help="with --falcon: a new user-and-password client (repeatable)")
    p.add_argument("--client-secret", action="append", default=[], metavar="NAME",
                   help="also write falconpay-NAME-identity with that client's seed or password")
    p.add_argument("--provisioning", default=PROVISIONING, metavar="NAME",
                   help="the provisioning identity (security.provisioning; default %(default)s)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (owner-only) instead of stdout")
    args = p.parse_args()

    for name in args.client + args.password_client + args.client_secret + [args.provisioning]:
        if not NAME.match(name):
            sys.exit(f"generate-secrets.py: {name!r} is not 1-64 characters of [A-Za-z0-9_-]")
    if (args.client or args.password_client) and not args.falcon:
        sys.exit("generate-secrets.py: --client and --password-client need --falcon (they are auth init's)")
    if args.falcon:
        run_auth_init(args.falcon, args.keys_dir, args.client, args.password_client,
                      args.provisioning)
    if not os.path.isdir(args.keys_dir):
        sys.exit(f"generate-secrets.py: {args.keys_dir} is not a directory; run `falcon auth init --dir "
                 f"{args.keys_dir}` (or pass --falcon)")
    names = actors(args.keys_dir)
    if not names:
        sys.exit(f"generate-secrets.py: no <actor>.key in {args.keys_dir}: not a `falcon auth init` directory")

    check_partitions(args.keys_dir, configured_partitions())
    plan = layout(names, args.provisioning)
    for client in args.client_secret:
        files = [f for f in (f"{client}.nk", f"{client}.password")
                 if os.path.isfile(os.path.join(args.keys_dir, f))]
        if not files:
            sys.exit(f"generate-secrets.py: no {client}.nk or {client}.password in {args.keys_dir}; "
                     f"issue it first (--falcon BIN --client {client})")
        plan[f"falconpay-{client}-identity"] = files[:1]
    text = "".join(f"---\n{secret(name, files, args.keys_dir)}" for name, files in plan.items())
    if args.output:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
