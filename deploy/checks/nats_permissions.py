#!/usr/bin/env python3
"""Proves, on a live nats-server, the permissions `falcon auth init`
generates: each one allowed and refused, over the NATS protocol.

    nats_permissions.py NATS_SERVER FALCON [--values deploy/k8s/nats/values.yaml]

Runs `FALCON auth init` into a temporary directory (with the nkey client
`alice` and the password client `plain` besides the default `client`),
starts NATS_SERVER on a free loopback port with a config that includes the
generated nats-auth.conf, provisions the topology with `FALCON --as
provisioning streams apply`, and then connects as every identity (nkey
identities sign the server's nonce with their seed, through the `nkeys`
package) and proves:

  * an actor publishes its own events, not another actor's, not commands,
    not another actor's dead letters; pulls and acks its own durable
    consumers, not another actor's; cannot create, redefine or delete a
    durable consumer (its own either) nor create, update, delete or purge a
    stream;
  * provisioning alone creates, updates and deletes streams and consumers,
    yet cannot delete or purge FALCON_EVT or FALCON_CMD nor delete their
    messages, and publishes no command or event;
  * the treasury alone deposits (falcon.cmd.wallet.deposit.treasury, stored
    in FALCON_CMD), and publishes nothing else;
  * a client publishes its commands naming itself (stored in FALCON_CMD),
    not naming another principal, not a deposit, no event; reads FALCON_EVT
    (stream info, messages, ephemeral consumers) and not FALCON_CMD or
    FALCON_DLQ; never pulls, acks or deletes a durable consumer;
  * the operator purges dead letters only, and publishes no command or
    event;
  * no identity deletes or purges FALCON_EVT or FALCON_CMD, and both still
    hold their messages at the end;
  * each identity subscribes to its own inbox (_INBOX_<name>.>) and to no
    other identity's, nor to _INBOX.> or the event subjects;
  * an anonymous connection, a wrong password, an unknown nkey (a seed from
    another `auth init`) and a signature that does not match the claimed
    key are all refused.

The durable consumers and their owners are read from the live server (each
is named <actor>-...). With `--values`, the same proof runs a second time
on the server config the NATS chart values amount to (rendered by
check_nats_values.py, the generated file at the include's path), as one
node: the cluster block is left out, since its routes name the chart's
pods.

Prints one line per failed expectation and exits 1 if there was any; stops
every server it started. Every wait is bounded by a deadline.
"""

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import nkeys

TIMEOUT_S = 5.0
STREAMS = ("FALCON_CMD", "FALCON_EVT", "FALCON_DLQ")
RECORD = ("FALCON_CMD", "FALCON_EVT")   # never deleted or purged
ACTORS = ("payment", "risk", "wallet", "recon")
PROVISIONING, TREASURY, OPERATOR = "provisioning", "treasury", "operator"
CLIENTS = ("client", "alice")           # nkey clients
PLAIN = "plain"                         # a password client


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Refused(Exception):
    pass


class Conn:
    """A minimal NATS client: CONNECT (nkey or user and password), PUB,
    SUB, requests, PING/PONG; every read bounded by a deadline."""

    def __init__(self, port, name, seed=None, password=None, claim=None):
        self.name = name
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.buf = b""
        self.sid = 0
        self.seq = 0
        line = self._line(time.monotonic() + TIMEOUT_S)
        if not line.startswith(b"INFO "):
            raise RuntimeError(f"unexpected greeting {line!r}")
        info = json.loads(line[5:])
        opts = {"verbose": False, "pedantic": False, "protocol": 1, "headers": True,
                "no_responders": True, "name": f"permissions-check-{name}"}
        if seed is not None:
            kp = nkeys.from_seed(seed.encode())
            nonce = info.get("nonce", "").encode()
            sig = kp.sign(nonce)
            opts["nkey"] = claim or kp.public_key.decode()
            opts["sig"] = base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
        elif password is not None:
            opts.update(user=name, **{"pass": password})
        self._send(b"CONNECT " + json.dumps(opts).encode() + b"\r\n")
        self.inbox = f"_INBOX_{name}.check"

    def _send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer before the deadline")
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n, deadline):
        while len(self.buf) < n + 2:
            self._fill(deadline)
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _next(self, deadline):
        """One protocol item: ('PONG'|'ERR'|'MSG', ...)."""
        while True:
            line = self._line(deadline)
            if line == b"PONG":
                return ("PONG",)
            if line == b"PING":
                self._send(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                return ("ERR", line.decode())
            elif line.startswith(b"MSG "):
                # MSG <subject> <sid> [reply] <size>
                parts = line.split()
                return ("MSG", int(parts[2]), b"", self._exact(int(parts[-1]), deadline))
            elif line.startswith(b"HMSG "):
                # HMSG <subject> <sid> [reply] <header size> <total size>
                parts = line.split()
                hlen, total = int(parts[-2]), int(parts[-1])
                data = self._exact(total, deadline)
                return ("MSG", int(parts[2]), data[:hlen], data[hlen:])
            # +OK and INFO updates are ignored.

    def flush(self):
        """PING; the -ERRs and messages that arrive before PONG."""
        self._send(b"PING\r\n")
        deadline = time.monotonic() + TIMEOUT_S
        errors, msgs = [], []
        while True:
            item = self._next(deadline)
            if item[0] == "PONG":
                return errors, msgs
            (errors if item[0] == "ERR" else msgs).append(item[1:] if item[0] == "MSG"
                                                          else item[1])

    def connected(self):
        try:
            errors, _ = self.flush()
        except (ConnectionError, OSError, TimeoutError):
            return False
        return not errors

    def pub(self, subject, payload=b"{}", reply=None):
        head = f"PUB {subject} {reply + ' ' if reply else ''}{len(payload)}\r\n"
        self._send(head.encode() + payload + b"\r\n")
        errors, _ = self.flush()
        return errors

    def sub(self, subject):
        self.sid += 1
        self._send(f"SUB {subject} {self.sid}\r\n".encode())
        errors, _ = self.flush()
        return errors

    def request(self, subject, payload=b""):
        """(errors, (headers, body) or None): subscribe to a new subject in
        its own inbox, publish with it as the reply subject, and wait for
        the first message there (a reply, or the message a pull delivers),
        or a -ERR, until the deadline."""
        self.seq += 1
        self.sid += 1
        sid, reply = self.sid, f"{self.inbox}.{self.seq}"
        self._send(f"SUB {reply} {sid}\r\nPUB {subject} {reply} {len(payload)}\r\n".encode() +
                   payload + f"\r\nUNSUB {sid} 1\r\nPING\r\n".encode())
        deadline = time.monotonic() + TIMEOUT_S
        errors, answer, ponged = [], None, False
        while answer is None:
            try:
                item = self._next(deadline)
            except TimeoutError:
                break
            if item[0] == "ERR":
                errors.append(item[1])
            elif item[0] == "PONG":
                ponged = True
                if errors:
                    break
            elif item[1] == sid:
                answer = (item[2], item[3])
        if not ponged and answer is not None:
            # Drain the PONG so that the next call starts clean.
            while self._next(deadline)[0] != "PONG":
                pass
        return errors, answer

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def denied(errors, subject=None):
    return any("Permissions Violation" in e and (subject is None or f'"{subject}"' in e)
               for e in errors)


class Proof:
    """The expectations of one run, and what failed."""

    def __init__(self, label):
        self.label = label
        self.failures = []
        self.count = 0

    def fail(self, text):
        self.failures.append(f"[{self.label}] {text}")

    def pub(self, conn, subject, allowed, payload=b"{}"):
        self.count += 1
        errors = conn.pub(subject, payload)
        refused = denied(errors, subject)
        if refused == allowed:
            self.fail(f"{conn.name}: publish {subject} was "
                      f"{'refused' if refused else 'allowed'}, expected the opposite")
        elif errors and allowed:
            self.fail(f"{conn.name}: publish {subject}: {errors}")

    def sub(self, conn, subject, allowed):
        self.count += 1
        errors = conn.sub(subject)
        refused = denied(errors, subject)
        if refused == allowed:
            self.fail(f"{conn.name}: subscribe {subject} was "
                      f"{'refused' if refused else 'allowed'}, expected the opposite")

    def api(self, conn, subject, body=None, ok=True):
        """A request that must be allowed and answered; with ok, answered
        without a JetStream error. Returns the JSON reply (or None)."""
        self.count += 1
        payload = json.dumps(body).encode() if body is not None else b""
        errors, answer = conn.request(subject, payload)
        if denied(errors):
            self.fail(f"{conn.name}: {subject} was refused, expected allowed")
            return None
        if answer is None:
            self.fail(f"{conn.name}: {subject}: no reply {errors or ''}".rstrip())
            return None
        headers, data = answer
        if headers.startswith(b"NATS/1.0 503"):
            self.fail(f"{conn.name}: {subject}: no responders")
            return None
        try:
            reply = json.loads(data) if data else {}
        except ValueError:
            reply = {"raw": data.decode(errors="replace")}
        if ok and isinstance(reply, dict) and reply.get("error"):
            self.fail(f"{conn.name}: {subject}: {reply['error']}")
        return reply

    def stored(self, conn, subject, stream):
        """A JetStream publish that must be acknowledged by STREAM."""
        reply = self.api(conn, subject, body={"probe": subject})
        if reply is not None and reply.get("stream") != stream:
            self.fail(f"{conn.name}: {subject} not stored in {stream}: {reply}")

    def login_refused(self, what, make):
        self.count += 1
        try:
            c = make()
        except (ConnectionError, OSError, TimeoutError):
            return
        try:
            if c.connected():
                self.fail(f"{what}: connection accepted, expected refused")
        finally:
            c.close()


def falcon_env(keys_dir, url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALCON__")}
    env.update(FALCON__SECURITY__KEYS_DIR=keys_dir, FALCON__NATS__URL=url,
               FALCON__STREAMS__REPLICAS="1", NO_COLOR="1")
    return env


def auth_init(falcon, keys_dir, cwd, extra=()):
    run = subprocess.run([falcon, "--json", "auth", "init", "--dir", keys_dir, *extra],
                         cwd=cwd, env=falcon_env(keys_dir, "nats://127.0.0.1:1"),
                         capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        sys.exit(f"falcon auth init failed: {run.stderr or run.stdout}")
    return {i["name"]: i for i in json.loads(run.stdout)["identities"]}


def start_server(server, conf, port, work, env=None):
    log_path = os.path.join(work, f"server-{port}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen([server, "-c", conf], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **(env or {})))
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, log
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc, log)
                sys.exit(f"nats-server did not start with {conf}:\n" + open(log_path).read())
            # Not a synchronisation sleep: the next connection attempt of
            # a poll bounded by the deadline above.
            time.sleep(0.05)


def stop(proc, log):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def prove(label, port, keys, ids, stranger, falcon, work):
    p = Proof(label)
    seed = {n: open(os.path.join(keys, f"{n}.nk")).read().strip()
            for n in ids if os.path.exists(os.path.join(keys, f"{n}.nk"))}
    password = open(os.path.join(keys, f"{PLAIN}.password")).read().strip()
    conns = []

    def connect(name):
        c = Conn(port, name, password=password) if name == PLAIN else Conn(port, name, seed[name])
        conns.append(c)
        if not c.connected():
            raise Refused(f"{name}: could not connect with its generated credentials")
        return c

    try:
        # Provisioning through the real CLI, as the streams Job does.
        run = subprocess.run([falcon, "--as", PROVISIONING, "streams", "apply"], cwd=work,
                             env=falcon_env(keys, f"nats://127.0.0.1:{port}"),
                             capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            p.fail(f"falcon --as provisioning streams apply failed: {run.stderr or run.stdout}")
            return p
        names = [PROVISIONING, TREASURY, OPERATOR, *ACTORS, *CLIENTS, PLAIN]
        c = {n: connect(n) for n in names}
        prov = c[PROVISIONING]

        # The durable consumers, from the server; each belongs to one actor.
        durables = {}
        for stream in STREAMS:
            reply = p.api(prov, f"$JS.API.CONSUMER.NAMES.{stream}", {}) or {}
            for name in reply.get("consumers") or []:
                owner = name.split("-", 1)[0]
                if owner not in ACTORS:
                    p.fail(f"consumer {stream}/{name}: no actor owns it by name")
                durables[(stream, name)] = owner
        for actor in ACTORS:
            if actor not in durables.values():
                p.fail(f"streams apply made no durable consumer for {actor}")

        # A stored event and command to read back and to keep.
        p.stored(c["payment"], "falcon.evt.payment.requested.perm-p1", "FALCON_EVT")
        p.stored(c["client"], "falcon.cmd.payment.create.client", "FALCON_CMD")

        # --- actors ---------------------------------------------------------
        own_evt = {"payment": "payment.requested.perm-p2", "risk": "risk.approved.perm-p2",
                   "wallet": "wallet.funds_reserved.perm-p2", "recon": "recon.mismatch.perm-p2"}
        for actor in ACTORS:
            a = c[actor]
            p.pub(a, f"falcon.evt.{own_evt[actor]}", True)
            for other in ACTORS:
                if other != actor:
                    p.pub(a, f"falcon.evt.{own_evt[other]}", False)
            for kind in ("wallet.open", "wallet.deposit", "payment.create", "payment.refund"):
                p.pub(a, f"falcon.cmd.{kind}.{actor}", False)
            p.pub(a, f"falcon.cmd.wallet.deposit.{TREASURY}", False)
            p.pub(a, "falcon.ctl.node-1.kill.payment", False)
            # Membership beats: its own actor's only.
            for other in ACTORS:
                p.pub(a, f"falcon.member.{other}", other == actor,
                      payload=b'{"instance":"perm-check"}')
                p.sub(a, f"falcon.member.{other}", other == actor)
            p.sub(a, "falcon.member.>", False)
            for (stream, name), owner in durables.items():
                mine = owner == actor
                p.pub(a, f"falcon.dlq.{name}.falcon.evt.x", mine)
                p.pub(a, f"$JS.ACK.{stream}.{name}.1.1.1.1.1", mine)
                if mine:
                    p.api(a, f"$JS.API.CONSUMER.UNPIN.{stream}.{name}", {"group": "owner"}, ok=False)
                else:
                    p.pub(a, f"$JS.API.CONSUMER.UNPIN.{stream}.{name}", False)
                if mine:
                    # A real pull: answered (a message, or 404 no messages).
                    p.api(a, f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
                          {"batch": 1, "no_wait": True}, ok=False)
                else:
                    p.pub(a, f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", False)
                for verb in (f"CONSUMER.CREATE.{stream}.{name}",
                             f"CONSUMER.CREATE.{stream}.{name}.falcon.evt.>",
                             f"CONSUMER.DURABLE.CREATE.{stream}.{name}",
                             f"CONSUMER.DELETE.{stream}.{name}"):
                    p.pub(a, f"$JS.API.{verb}", False)
            p.pub(a, "$JS.API.CONSUMER.DURABLE.CREATE.FALCON_EVT.perm-new", False)
            for stream in STREAMS:
                for verb in ("CREATE", "UPDATE", "DELETE", "PURGE"):
                    p.pub(a, f"$JS.API.STREAM.{verb}.{stream}", False)
            p.pub(a, "$JS.API.STREAM.CREATE.PERM_NEW", False)
            for stream in RECORD:
                p.pub(a, f"$JS.API.STREAM.MSG.DELETE.{stream}", False)
            p.api(a, "$JS.API.STREAM.INFO.FALCON_EVT")
            # Replays read through ephemeral consumers (never a durable's
            # name, checked above); not on the dead letters.
            eph = p.api(a, "$JS.API.CONSUMER.CREATE.FALCON_EVT",
                        {"stream_name": "FALCON_EVT",
                         "config": {"ack_policy": "none", "inactive_threshold": 5_000_000_000,
                                    "filter_subject": "falcon.evt.payment.>"}}) or {}
            if eph.get("name"):
                p.api(a, f"$JS.API.CONSUMER.DELETE.FALCON_EVT.{eph['name']}")
            p.pub(a, "$JS.API.CONSUMER.CREATE.FALCON_DLQ", False)
            p.sub(a, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."
                     f"{next(f'{s}.{n}' for (s, n), o in durables.items() if o == actor)}", True)

        # --- provisioning ---------------------------------------------------
        tmp = {"name": "PERM_TMP", "subjects": ["perm.tmp.>"], "storage": "memory",
               "num_replicas": 1}
        p.api(prov, "$JS.API.STREAM.CREATE.PERM_TMP", tmp)
        tmp["max_msgs"] = 10
        p.api(prov, "$JS.API.STREAM.UPDATE.PERM_TMP", tmp)
        info = p.api(prov, "$JS.API.STREAM.INFO.FALCON_EVT") or {}
        if info.get("config"):
            p.api(prov, "$JS.API.STREAM.UPDATE.FALCON_EVT", info["config"])
        p.api(prov, "$JS.API.CONSUMER.CREATE.PERM_TMP.perm-dur",
              {"stream_name": "PERM_TMP",
               "config": {"durable_name": "perm-dur", "ack_policy": "explicit"}})
        p.api(prov, "$JS.API.CONSUMER.DELETE.PERM_TMP.perm-dur")
        p.api(prov, "$JS.API.STREAM.PURGE.PERM_TMP")
        p.api(prov, "$JS.API.STREAM.DELETE.PERM_TMP")
        for stream in RECORD:
            for verb in ("DELETE", "PURGE", "MSG.DELETE"):
                p.pub(prov, f"$JS.API.STREAM.{verb}.{stream}", False)
        p.pub(prov, "falcon.evt.wallet.deposited.perm-w1", False)
        p.pub(prov, "falcon.cmd.wallet.deposit.provisioning", False)
        p.pub(prov, f"falcon.cmd.wallet.deposit.{TREASURY}", False)

        # --- treasury -------------------------------------------------------
        t = c[TREASURY]
        p.stored(t, f"falcon.cmd.wallet.deposit.{TREASURY}", "FALCON_CMD")
        p.pub(t, f"falcon.cmd.payment.create.{TREASURY}", False)
        p.pub(t, "falcon.cmd.wallet.deposit.client", False)
        p.pub(t, "falcon.evt.wallet.deposited.perm-w1", False)

        # --- clients --------------------------------------------------------
        for name in (*CLIENTS, PLAIN):
            cl = c[name]
            other = "alice" if name != "alice" else "client"
            for kind in ("wallet.open", "payment.create", "payment.refund"):
                p.stored(cl, f"falcon.cmd.{kind}.{name}", "FALCON_CMD")
                p.pub(cl, f"falcon.cmd.{kind}.{other}", False)
            p.pub(cl, "falcon.cmd.payment.create", False)
            p.pub(cl, f"falcon.cmd.wallet.deposit.{name}", False)
            p.pub(cl, f"falcon.cmd.wallet.deposit.{TREASURY}", False)
            p.pub(cl, "falcon.evt.payment.completed.perm-p1", False)
            p.pub(cl, "falcon.dlq.wallet-evt.x", False)
            p.pub(cl, "falcon.ctl.node-1.kill.payment", False)
            # What it may read: FALCON_EVT.
            p.api(cl, "$JS.API.STREAM.INFO.FALCON_EVT")
            p.api(cl, "$JS.API.STREAM.MSG.GET.FALCON_EVT", {"seq": 1})
            eph = p.api(cl, "$JS.API.CONSUMER.CREATE.FALCON_EVT",
                        {"stream_name": "FALCON_EVT",
                         "config": {"ack_policy": "none", "inactive_threshold": 5_000_000_000,
                                    "filter_subject": "falcon.evt.payment.>"}}) or {}
            if eph.get("name"):
                p.api(cl, f"$JS.API.CONSUMER.MSG.NEXT.FALCON_EVT.{eph['name']}",
                      {"batch": 1, "no_wait": True}, ok=False)
                p.api(cl, f"$JS.API.CONSUMER.DELETE.FALCON_EVT.{eph['name']}")
            # What it may not.
            for stream in ("FALCON_CMD", "FALCON_DLQ"):
                p.pub(cl, f"$JS.API.CONSUMER.CREATE.{stream}", False)
                p.pub(cl, f"$JS.API.STREAM.MSG.GET.{stream}", False)
                p.pub(cl, f"$JS.API.DIRECT.GET.{stream}", False)
            p.pub(cl, "$JS.API.CONSUMER.DURABLE.CREATE.FALCON_EVT.perm-new", False)
            for actor in ACTORS:
                p.pub(cl, f"falcon.member.{actor}", False)
                p.sub(cl, f"falcon.member.{actor}", False)
            for (stream, dname) in durables:
                p.pub(cl, f"$JS.API.CONSUMER.UNPIN.{stream}.{dname}", False)
                p.pub(cl, f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{dname}", False)
                p.pub(cl, f"$JS.API.CONSUMER.DELETE.{stream}.{dname}", False)
                p.pub(cl, f"$JS.API.CONSUMER.CREATE.{stream}.{dname}", False)
                p.pub(cl, f"$JS.ACK.{stream}.{dname}.1.1.1.1.1", False)
            for stream in STREAMS:
                for verb in ("CREATE", "UPDATE", "DELETE", "PURGE"):
                    p.pub(cl, f"$JS.API.STREAM.{verb}.{stream}", False)
            p.sub(cl, "falcon.evt.>", False)
            p.sub(cl, "falcon.cmd.>", False)

        # --- operator -------------------------------------------------------
        op = c[OPERATOR]
        p.api(op, "$JS.API.STREAM.PURGE.FALCON_DLQ")
        p.api(op, "$JS.API.STREAM.INFO.FALCON_CMD")
        p.pub(op, "falcon.cmd.payment.create.operator", False)
        p.pub(op, f"falcon.cmd.wallet.deposit.{TREASURY}", False)
        p.pub(op, "falcon.evt.payment.completed.perm-p1", False)
        for stream in STREAMS:
            p.pub(op, f"$JS.API.STREAM.UPDATE.{stream}", False)
            p.pub(op, f"$JS.API.STREAM.DELETE.{stream}", False)

        # --- everyone: the record stays, inboxes are private ---------------
        for name, conn in c.items():
            for stream in RECORD:
                for verb in ("DELETE", "PURGE", "MSG.DELETE"):
                    p.pub(conn, f"$JS.API.STREAM.{verb}.{stream}", False)
            p.sub(conn, f"_INBOX_{name}.more", True)
            for other in names:
                if other != name:
                    p.sub(conn, f"_INBOX_{other}.>", False)
            p.sub(conn, "_INBOX.>", False)
            p.sub(conn, ">", False)
        for stream in RECORD:
            info = p.api(prov, f"$JS.API.STREAM.INFO.{stream}") or {}
            if (info.get("state") or {}).get("messages", 0) < 1:
                p.fail(f"{stream} lost its messages: {info.get('state')}")

        # --- who may not connect at all ------------------------------------
        p.login_refused("anonymous", lambda: Conn(port, "anonymous"))
        p.login_refused("plain with a wrong password",
                        lambda: Conn(port, PLAIN, password="not-the-password"))
        p.login_refused("an nkey from another auth init",
                        lambda: Conn(port, "stranger", stranger))
        p.login_refused("payment's key signed by wallet's seed",
                        lambda: Conn(port, "forger", seed["wallet"],
                                     claim=ids["payment"]["public_key"]))
    except Refused as e:
        p.fail(str(e))
    except (ConnectionError, OSError, TimeoutError) as e:
        p.fail(f"connection lost: {e}")
    finally:
        for conn in conns:
            conn.close()
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("nats_server")
    ap.add_argument("falcon")
    ap.add_argument("--values", help="also prove it on the NATS chart values' server config")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="falcon-nats-perm-")
    proofs = []
    try:
        keys = os.path.join(work, "keys")
        ids = auth_init(args.falcon, keys, work,
                        ["--client", "alice", "--password-client", PLAIN])
        other = os.path.join(work, "other")
        auth_init(args.falcon, other, work)
        stranger = open(os.path.join(other, "client.nk")).read().strip()

        targets = []
        port = free_port()
        conf = os.path.join(work, "server.conf")
        with open(conf, "w") as f:
            f.write(f"listen: 127.0.0.1:{port}\n"
                    f"jetstream {{ store_dir: {json.dumps(os.path.join(work, 'js'))} }}\n"
                    'include "keys/nats-auth.conf"\n')
        targets.append(("nats-auth.conf", conf, port, {}))
        if args.values:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import check_nats_values as values
            port = free_port()
            conf = values.render(values.load(args.values), os.path.join(keys, "nats-auth.conf"),
                                 os.path.join(work, "chart"), port=port, http_port=None,
                                 store_dir=os.path.join(work, "chart-js"), cluster=False)
            targets.append(("chart values", conf, port, {"POD_NAME": "nats-0"}))

        for label, conf, port, env in targets:
            proc, log = start_server(args.nats_server, conf, port, work, env)
            try:
                proofs.append(prove(label, port, keys, ids, stranger, args.falcon, work))
            finally:
                stop(proc, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    failures = [f for p in proofs for f in p.failures]
    for f in failures:
        print(f"  {f}")
    for p in proofs:
        print(f"{p.label}: {p.count} expectations, {len(p.failures)} failed")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
