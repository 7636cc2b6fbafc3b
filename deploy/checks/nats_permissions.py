#!/usr/bin/env python3
"""Proves the per-actor NATS permissions of deploy/nats/accounts.conf on a
real nats-server.

    nats_permissions.py NATS_SERVER_BINARY deploy/nats/accounts.conf

Starts the given nats-server on a free loopback port (its own temporary
store, JetStream on) with a config that includes accounts.conf, then, over
the plain NATS protocol (standard library only):

  * each actor may publish its own events and dead letters, and may not
    publish another actor's events, commands, or on falcon.ctl.>;
  * no actor or client may delete or purge a stream;
  * the client may publish commands and nothing else of the above;
  * anonymous connections and wrong passwords are refused;
  * JetStream works for the users: the operator creates FALCON_EVT, the
    payment actor's event is stored (a publish ack), the wallet actor's
    attempt at a payment event is refused.

Prints one line per failed expectation and exits 1 if there was any; stops
the server in every case. Bounded: every read has a timeout, the whole run
takes a second or two.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

USERS = ("payment", "risk", "wallet", "client", "operator", "sys")
TIMEOUT_S = 5.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Conn:
    """A minimal NATS client: CONNECT, PUB, SUB, PING/PONG, MSG."""

    def __init__(self, port, user=None, password=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.buf = b""
        info = self._line()
        if not info.startswith(b"INFO "):
            raise RuntimeError(f"unexpected greeting {info!r}")
        opts = {"verbose": False, "pedantic": False, "protocol": 1,
                "name": f"permissions-check-{user}", "headers": True}
        if user is not None:
            opts.update(user=user, **{"pass": password})
        self._send(b"CONNECT " + json.dumps(opts).encode() + b"\r\n")
        self.sid = 0

    def _send(self, data):
        self.sock.sendall(data)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def flush(self):
        """PING, then collect every -ERR and MSG that arrives before PONG."""
        self._send(b"PING\r\n")
        errors, msgs = [], []
        while True:
            line = self._line()
            if line == b"PONG":
                return errors, msgs
            if line == b"PING":
                self._send(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                errors.append(line.decode())
            elif line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                msgs.append(self._read_msg(line))
            # +OK and INFO updates are ignored.

    def _read_msg(self, line):
        parts = line.split()
        size = int(parts[-1])
        return parts[1].decode(), self._exact(size)

    def connected(self):
        """True when the server accepted the CONNECT."""
        try:
            errors, _ = self.flush()
        except (ConnectionError, OSError):
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

    def request(self, subject, payload):
        """Publish with a reply inbox; return (errors, reply payload or None)."""
        inbox = f"_INBOX.check.{self.sid + 1}"
        errors = self.sub(inbox)
        head = f"PUB {subject} {inbox} {len(payload)}\r\n"
        self._send(head.encode() + payload + b"\r\n")
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            more, msgs = self.flush()
            errors += more
            if errors:
                return errors, None
            for subj, data in msgs:
                if subj == inbox:
                    return errors, data
            time.sleep(0.05)
        return errors + ["no reply"], None

    def close(self):
        self.sock.close()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    server, accounts = sys.argv[1], os.path.abspath(sys.argv[2])
    failures = []
    passwords = {u: f"pw-{u}-{os.getpid()}" for u in USERS}
    env = dict(os.environ)
    for u, pw in passwords.items():
        env[f"FALCON_NATS_{u.upper()}_PASSWORD"] = pw

    work = tempfile.mkdtemp(prefix="falcon-nats-perm-")
    port = free_port()
    shutil.copy(accounts, os.path.join(work, "accounts.conf"))
    with open(os.path.join(work, "server.conf"), "w") as f:
        f.write(f"listen: 127.0.0.1:{port}\n"
                f"jetstream {{ store_dir: {json.dumps(os.path.join(work, 'js'))} }}\n"
                "include accounts.conf\n")
    log = open(os.path.join(work, "server.log"), "w")
    proc = subprocess.Popen([server, "-c", os.path.join(work, "server.conf")],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    conns = []
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    sys.exit("nats-server did not start:\n" +
                             open(os.path.join(work, "server.log")).read())
                time.sleep(0.1)

        def connect(user):
            c = Conn(port, user, passwords[user])
            conns.append(c)
            if not c.connected():
                failures.append(f"{user}: could not connect with its password")
            return c

        def expect(user, conn, op, subject, allowed):
            errors = conn.pub(subject) if op == "pub" else conn.sub(subject)
            denied = any("Permissions Violation" in e for e in errors)
            if denied == allowed:
                verdict = "refused" if denied else "allowed"
                failures.append(f"{user}: {op} {subject} was {verdict}, expected the opposite")

        c = {u: connect(u) for u in ("payment", "risk", "wallet", "client", "operator")}

        actors = {"payment": "payment.requested.p1",
                  "risk": "risk.approved.p1",
                  "wallet": "wallet.funds_reserved.p1"}
        for actor, own in actors.items():
            expect(actor, c[actor], "pub", f"falcon.evt.{own}", True)
            for other, theirs in actors.items():
                if other != actor:
                    expect(actor, c[actor], "pub", f"falcon.evt.{theirs}", False)
            expect(actor, c[actor], "pub", f"falcon.dlq.{actor}-evt.falcon.evt.x", True)
            expect(actor, c[actor], "pub", "falcon.cmd.payment.create", False)
            expect(actor, c[actor], "pub", f"falcon.ctl.node-1.kill.{actor}", False)
            expect(actor, c[actor], "pub", "$JS.API.INFO", True)
            expect(actor, c[actor], "pub", "$JS.API.STREAM.DELETE.FALCON_EVT", False)
            expect(actor, c[actor], "pub", "$JS.API.STREAM.PURGE.FALCON_DLQ", False)
            expect(actor, c[actor], "sub", "_INBOX.abc", True)
            expect(actor, c[actor], "sub",
                   "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.FALCON_CMD.payment-cmd", True)
            expect(actor, c[actor], "sub", "falcon.evt.>", False)

        expect("client", c["client"], "pub", "falcon.cmd.payment.create", True)
        expect("client", c["client"], "pub", "falcon.cmd.wallet.deposit", True)
        expect("client", c["client"], "pub", "falcon.evt.payment.completed.p1", False)
        expect("client", c["client"], "pub", "falcon.dlq.x", False)
        expect("client", c["client"], "pub", "$JS.API.STREAM.DELETE.FALCON_EVT", False)
        expect("client", c["client"], "pub", "$JS.API.CONSUMER.CREATE.FALCON_DLQ", False)
        expect("client", c["client"], "pub", "$JS.API.CONSUMER.CREATE.FALCON_EVT", True)
        expect("client", c["client"], "pub", "falcon.ctl.node-1.kill.payment", False)

        expect("operator", c["operator"], "pub", "falcon.ctl.node-1.kill.payment", False)
        expect("operator", c["operator"], "pub", "$JS.API.STREAM.PURGE.FALCON_DLQ", True)
        expect("operator", c["operator"], "pub", "falcon.cmd.payment.create", True)

        # Nobody gets in without the right password.
        anon = Conn(port)
        conns.append(anon)
        if anon.connected():
            failures.append("anonymous: connection accepted, expected refused")
        wrong = Conn(port, "payment", "not-the-password")
        conns.append(wrong)
        if wrong.connected():
            failures.append("payment with a wrong password: accepted, expected refused")

        # JetStream in the FALCON account, through the users' permissions.
        cfg = {"name": "FALCON_EVT", "subjects": ["falcon.evt.>"],
               "storage": "memory", "num_replicas": 1}
        errors, reply = c["operator"].request("$JS.API.STREAM.CREATE.FALCON_EVT",
                                              json.dumps(cfg).encode())
        if errors or reply is None or b"error" in reply:
            failures.append(f"operator: could not create FALCON_EVT: {errors} {reply!r}")
        errors, reply = c["payment"].request("falcon.evt.payment.requested.p2", b"{}")
        if errors or reply is None or b'"stream":"FALCON_EVT"' not in reply:
            failures.append(f"payment: its event was not stored: {errors} {reply!r}")
        errors, reply = c["wallet"].request("falcon.evt.payment.completed.p2", b"{}")
        if not any("Permissions Violation" in e for e in errors):
            failures.append(f"wallet: a payment event was not refused: {errors} {reply!r}")
    finally:
        for conn in conns:
            try:
                conn.close()
            except OSError:
                pass
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)

    for f in failures:
        print(f"  {f}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
