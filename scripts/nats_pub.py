#!/usr/bin/env python3
"""Publish one message to NATS with nothing but the Python standard library.

FalconPay's clients are plain NATS publishers: a command is a JSON object on
its subject (see DESIGN.md). This script shows that on the wire, for places
without the `nats` CLI:

    scripts/nats_pub.py --url nats://127.0.0.1:4222 --msg-id cmd-pay-1 \\
        --user shop --password-file secrets/shop.password \\
        falcon.cmd.payment.create.shop \\
        '{"payment_id":"pay-1","from_wallet":"alice","to_wallet":"bob","amount":"12.50","currency":"USD"}'

By default it publishes with a reply inbox and waits for the reply, which on a
subject a JetStream stream captures is the stream's PubAck, printed as JSON:
`{"stream":"FALCON_CMD","seq":7}` (`"duplicate":true` when the stream dropped
it as a resend of the same Nats-Msg-Id). The same mode doubles as a request,
e.g. to the JetStream API (`$JS.API.STREAM.INFO.FALCON_CMD` with payload `""`).
With --core it does a plain publish and only checks, with a PING/PONG round
trip, that the server accepted it (no -ERR).

Exit codes: 0 published (and acked), 1 the reply reports an error or the
server answered -ERR, 2 no responders (no stream for the subject), timeout or
bad usage, 3 connection problems.

The protocol used (https://docs.nats.io/reference/reference-protocols/nats-protocol):
    server: INFO {...}
    client: CONNECT {"verbose":false,"headers":true,"no_responders":true,...}
    client: SUB <inbox> 1 / HPUB <subject> <inbox> <hdr_len> <total_len> + headers + payload
    client: PING            server: PONG (everything before it was processed)
    server: MSG|HMSG <inbox> 1 ... (the reply)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from urllib.parse import unquote, urlsplit

CRLF = b"\r\n"


class NatsError(Exception):
    pass


class Conn:
    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url if "://" in url else "nats://" + url)
        if parts.scheme not in ("nats", ""):
            raise NatsError(f"unsupported scheme {parts.scheme!r} (only nats://, no TLS)")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 4222
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.deadline = time.monotonic() + timeout
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as e:
            raise NatsError(f"cannot connect to {self.host}:{self.port}: {e}") from e
        self.buf = b""
        self.pending: list = []  # messages that arrived while waiting for PONG

    # -- reading ------------------------------------------------------------

    def _fill(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout as e:
            raise TimeoutError from e
        except OSError as e:
            raise NatsError(f"connection lost: {e}") from e
        if not chunk:
            raise NatsError("server closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while CRLF not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(CRLF, 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2 :]  # payload + CRLF
        return data

    def next_op(self):
        """Returns (op, args, headers_bytes, payload) for the next server op,
        answering the server's PINGs on the way."""
        while True:
            line = self._line()
            op, _, rest = line.partition(b" ")
            op = op.upper()
            if op == b"PING":
                self.send(b"PONG\r\n")
                continue
            if op == b"MSG":
                # MSG <subject> <sid> [reply-to] <#bytes>
                args = rest.split()
                payload = self._exactly(int(args[-1]))
                return "MSG", args, b"", payload
            if op == b"HMSG":
                # HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>
                args = rest.split()
                hlen, tlen = int(args[-2]), int(args[-1])
                data = self._exactly(tlen)
                return "HMSG", args, data[:hlen], data[hlen:]
            return op.decode(errors="replace"), rest.decode(errors="replace"), b"", b""

    # -- writing ------------------------------------------------------------

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise NatsError(f"connection lost: {e}") from e

    def handshake(self) -> dict:
        op, rest, _, _ = self.next_op()
        if op != "INFO":
            raise NatsError(f"expected INFO from the server, got {op} {rest}")
        info = json.loads(rest)
        if info.get("tls_required"):
            raise NatsError("the server requires TLS, which this script does not do")
        connect = {
            "verbose": False,
            "pedantic": False,
            "lang": "python-raw",
            "version": "0.1",
            "protocol": 1,
            "headers": True,
            "no_responders": True,
            "name": "falcon-nats-pub",
        }
        if self.user is not None and self.password is not None:
            connect.update(user=self.user, **{"pass": self.password})
        elif self.user is not None:
            connect["auth_token"] = self.user
        self.send(b"CONNECT " + json.dumps(connect, separators=(",", ":")).encode() + CRLF)
        self.ping()
        return info

    def ping(self) -> None:
        """PING and wait for PONG: the server has processed all sent before."""
        self.send(b"PING\r\n")
        while True:
            op, rest, _h, _p = self.next_op()
            if op == "PONG":
                return
            if op == "-ERR":
                raise NatsError(f"server error: {rest}")
            if op in ("MSG", "HMSG"):
                self.pending.append((op, rest, _h, _p))
            # +OK, INFO updates: ignore.


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    if not headers:
        return b""
    out = b"NATS/1.0\r\n"
    for k, v in headers:
        if not k or any(c in k for c in ":\r\n ") or any(c in v for c in "\r\n"):
            raise NatsError(f"invalid header {k!r}: {v!r}")
        out += f"{k}: {v}".encode() + CRLF
    return out + CRLF


def parse_status(hdrs: bytes) -> tuple[int | None, str]:
    """The status line of a reply's header block: `NATS/1.0 503` → 503."""
    first = hdrs.split(CRLF, 1)[0].decode(errors="replace")
    parts = first.split(" ", 2)
    if len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1]), parts[2] if len(parts) > 2 else ""
    return None, ""


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        description="Publish one message to NATS (stdlib only; waits for the JetStream ack by default).",
    )
    p.add_argument("subject")
    p.add_argument("payload", nargs="?", default=None, help="message body; '-' or omitted reads stdin")
    p.add_argument(
        "--url",
        default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
        help="server URL, nats://[user:pass@|token@]host:port (default $NATS_URL or nats://127.0.0.1:4222)",
    )
    p.add_argument("--user", help="connect as this user (FalconPay: a client `falcon auth init --password-client` issued)")
    p.add_argument("--password-file", help="the user's password, e.g. secrets/<user>.password")
    p.add_argument(
        "--inbox-prefix",
        help="reply inbox prefix (default _INBOX_<user> with --user: the broker lets an identity subscribe to its own inbox only, else _INBOX)",
    )
    p.add_argument("--msg-id", help="sets the Nats-Msg-Id header (JetStream de-duplication)")
    p.add_argument("-H", "--header", action="append", default=[], metavar="KEY:VALUE", help="extra header; repeatable")
    p.add_argument("--core", action="store_true", help="plain publish: no reply inbox, no ack wait")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds for the whole exchange (default 5)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    a = p.parse_args(argv)

    if not a.subject or any(c.isspace() for c in a.subject) or any(t in ("", "*", ">") for t in a.subject.split(".")):
        p.error(f"invalid publish subject {a.subject!r}: dot-separated tokens, no spaces, no wildcards")
    payload = a.payload
    if payload is None or payload == "-":
        payload = sys.stdin.read()
    body = payload.encode()

    headers: list[tuple[str, str]] = []
    if a.msg_id:
        headers.append(("Nats-Msg-Id", a.msg_id))
    for h in a.header:
        k, sep, v = h.partition(":")
        if not sep:
            p.error(f"--header {h!r}: expected KEY:VALUE")
        headers.append((k.strip(), v.strip()))

    if bool(a.user) != bool(a.password_file):
        p.error("--user and --password-file go together")
    prefix = a.inbox_prefix or (f"_INBOX_{a.user}" if a.user else "_INBOX")
    try:
        conn = Conn(a.url, a.timeout)
        if a.user:
            with open(a.password_file, encoding="utf-8") as f:
                conn.user, conn.password = a.user, f.read().strip()
        info = conn.handshake()
        if headers and not info.get("headers", False):
            raise NatsError("the server does not support headers (needed for --msg-id/--header)")
        hdr = encode_headers(headers)
        max_payload = info.get("max_payload", 1 << 20)
        if len(hdr) + len(body) > max_payload:
            raise NatsError(f"message of {len(hdr) + len(body)} bytes exceeds the server's max_payload {max_payload}")
        inbox = None
        if not a.core:
            inbox = f"{prefix}." + os.urandom(11).hex()
            conn.send(f"SUB {inbox} 1\r\nUNSUB 1 1\r\n".encode())
        reply = f" {inbox}" if inbox else ""
        if hdr:
            cmd = f"HPUB {a.subject}{reply} {len(hdr)} {len(hdr) + len(body)}\r\n".encode()
            conn.send(cmd + hdr + body + CRLF)
        else:
            conn.send(f"PUB {a.subject}{reply} {len(body)}\r\n".encode() + body + CRLF)
        conn.ping()  # raises on -ERR (bad subject, payload too large, permissions, ...)
        if a.core:
            if not a.quiet:
                print(f"published {len(body)} bytes to {a.subject}")
            return 0
        while True:
            op, args, hdrs, data = conn.pending.pop(0) if conn.pending else conn.next_op()
            if op in ("MSG", "HMSG"):
                break
            if op == "-ERR":
                raise NatsError(f"server error: {args}")
        status, text = parse_status(hdrs) if hdrs else (None, "")
        if status == 503:
            print(f"no responders on {a.subject}: no stream captures it (run `falcon streams apply`?)", file=sys.stderr)
            return 2
        if status is not None and status >= 400:
            print(f"error status {status} {text}".rstrip(), file=sys.stderr)
            return 1
        text = data.decode(errors="replace")
        if not a.quiet:
            print(text)
        try:
            reply_doc = json.loads(text)
        except ValueError:
            reply_doc = None
        return 1 if isinstance(reply_doc, dict) and "error" in reply_doc else 0
    except TimeoutError:
        print(f"timed out after {a.timeout}s waiting for the server", file=sys.stderr)
        return 2
    except NatsError as e:
        print(str(e), file=sys.stderr)
        return 1 if str(e).startswith("server error") else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
