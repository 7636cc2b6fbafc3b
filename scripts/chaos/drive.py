#!/usr/bin/env python3
"""Load driver and checker for FalconPay's chaos scripts (standard library only).

    drive.py load    publish N falcon.cmd.payment.create commands with JetStream acks
    drive.py settle  wait until every driven payment is terminal and every outbox empty
    drive.py report  compare the end state with what was driven; print the VERDICT line
    drive.py balances  record wallet balances (before the load)

load
    One NATS connection (the protocol code of scripts/nats_pub.py). Every
    command is an HPUB with a reply inbox and `Nats-Msg-Id: cmd-<payment id>`;
    up to --window publishes are in flight at once, paced at --rate per
    second (0: as fast as the acks come back). A publish whose ack does not
    come within --ack-timeout, or whose ack is an error (no responders, a
    JetStream API error while a stream has no leader), is published again
    with the same Nats-Msg-Id, so JetStream drops the copy if the first one
    got in. When the connection drops (a server restarting or stopping) the
    driver reconnects, trying the --url servers in turn, and publishes again
    everything not yet acked. The plan is deterministic (--seed): payment
    <prefix>-<n> always has the same payer, payee and amount, so a retry is
    the same command. Each payment JetStream acked is appended to --out as
    `id<TAB>from<TAB>to<TAB>amount`; a summary goes to --stats (JSON).

settle
    Polls `falcon --json saga list` and `falcon --json verify` every
    --interval seconds until every id in --acked is terminal (completed or
    failed) and the outbox backlog is 0, or --deadline seconds pass. When
    the payment actor's own table (verify's payments_by_state) has had every
    payment terminal for --stale-after seconds but saga list (a read model
    fed by FALCON_EVT) still shows some as not terminal, it asks `falcon saga
    show` (which folds FALCON_EVT itself) about those, and counts the ones it
    finds terminal as settled, but stale in the view (--stale-out). Exit 0
    when settled, 1 on the deadline, 2 when a process listed in --pids-file
    is gone.

report
    Reads the end state (`saga list`, `saga show` for what the list does not
    show as terminal, `verify`, `wallet balance`, `dlq list`) and the
    balances before the load (--before, written by `balances`), and prints
    one line:

      VERDICT <name>: PASS|FAIL driven=.. terminal=.. completed=.. failed=..
        lost=.. double_applied=.. dlq=.. kills=.. elapsed=..s money_delta=..
        view_stale=.. [key=value ...]

    driven: payments JetStream acked to the driver. lost: driven payments
    terminal neither in saga list nor in FALCON_EVT. double_applied: the
    invariant violations `falcon verify` reports (money moved twice breaks
    them). money_delta: what the payers lost minus the sum of the completed
    payments' amounts, in minor units (each completed payment must move its
    amount exactly once; every wallet's change is checked the same way).
    view_stale: driven payments terminal in FALCON_EVT but not in saga list.
    PASS needs all of: lost=0, double_applied=0, money_delta=0, no wallet
    off, no hold left, dlq=0, view_stale=0, outbox backlog 0, saga list and
    the payments table agreeing on the counts by state, and no problem the
    calling script passed with --problem. Exit 0 on PASS, 1 on FAIL; the
    problems go to stderr.

balances
    Writes `falcon --json wallet balance` of the given wallets to a JSON file.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import queue
import random
import re
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nats_pub  # noqa: E402  (scripts/nats_pub.py: Conn, encode_headers, parse_status)

SUBJECT_PREFIX = "falcon.cmd.payment.create."


def log(msg: str) -> None:
    print(f"drive: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------


class Link(nats_pub.Conn):
    """A nats_pub.Conn that a reader thread reads for as long as it lives,
    while the main thread writes (sends are serialised by a lock)."""

    def __init__(self, url: str, timeout: float):
        super().__init__(url, timeout)
        self.lock = threading.Lock()
        self.streaming = False
        self.closed = False

    def send(self, data: bytes) -> None:
        with self.lock:
            super().send(data)

    def _fill(self) -> None:
        if not self.streaming:
            return super()._fill()
        # After the handshake: block on the socket, with a bound so that a
        # server that vanished without a FIN is noticed (it PINGs every 2 min
        # by default; we PING ourselves every few seconds).
        self.sock.settimeout(15.0)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout as e:
            raise nats_pub.NatsError("no data from the server for 15s") from e
        except OSError as e:
            raise nats_pub.NatsError(f"connection lost: {e}") from e
        if not chunk:
            raise nats_pub.NatsError("server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def reader(link: Link, gen: int, events: queue.Queue) -> None:
    try:
        while True:
            op, args, hdrs, data = link.pending.pop(0) if link.pending else link.next_op()
            if op in ("MSG", "HMSG"):
                events.put(("reply", gen, args[0].decode(errors="replace"), hdrs, data))
            elif op == "-ERR":
                events.put(("lost", gen, f"server error: {args}"))
                return
            # PONG, +OK, INFO: nothing to do.
    except (nats_pub.NatsError, TimeoutError, OSError, ValueError, IndexError) as e:
        if not link.closed:
            events.put(("lost", gen, str(e)))


def make_plan(a) -> list[tuple[str, str, str, str]]:
    rng = random.Random(a.seed)
    payers = [w for w in a.payers.split(",") if w]
    payees = [w for w in a.payees.split(",") if w]
    lo, hi = (int(Decimal(x) * 100) for x in (a.amount_min, a.amount_max))
    plan = []
    for n in range(a.count):
        frm = rng.choice(payers)
        to = rng.choice([w for w in payees if w != frm])
        cents = rng.randint(lo, hi)
        plan.append((f"{a.prefix}-{n:06d}", frm, to, f"{cents // 100}.{cents % 100:02d}"))
    return plan


def cmd_load(a) -> int:
    urls = [u.strip() for u in a.url.split(",") if u.strip()]
    plan = make_plan(a)
    n = len(plan)
    bodies = []
    for pid, frm, to, amount in plan:
        body = json.dumps(
            {"payment_id": pid, "from_wallet": frm, "to_wallet": to, "amount": amount, "currency": a.currency},
            separators=(",", ":"),
        ).encode()
        hdr = nats_pub.encode_headers([("Nats-Msg-Id", f"cmd-{pid}")])
        bodies.append((hdr, body))

    out = open(a.out, "a", buffering=1)
    events: queue.Queue = queue.Queue()
    acked = [False] * n
    n_acked = 0
    fresh = collections.deque(range(n))  # never sent yet (paced by --rate)
    again = collections.deque()  # to send again, at once
    later: list[tuple[float, int]] = []  # (not before, idx): after an error reply
    inflight: dict[str, tuple[int, float]] = {}  # token -> (idx, sent at)
    stats = collections.Counter()
    token_seq = 0
    started = time.monotonic()
    deadline = started + a.timeout
    first_sent = 0  # fresh publishes so far, for pacing

    password = ""
    if a.user:
        with open(a.password_file, encoding="utf-8") as f:
            password = f.read().strip()
    # Commands name their principal; the broker lets an identity reply-
    # subscribe to its own inbox only.
    subject = SUBJECT_PREFIX + (a.user or "client")
    inbox_prefix = f"_INBOX_{a.user}" if a.user else "_INBOX"

    link: Link | None = None
    gen = 0
    inbox = ""
    url_i = 0
    next_connect = 0.0
    backoff = 0.1
    last_ping = 0.0
    down_since: float | None = None

    def connect() -> bool:
        nonlocal link, gen, inbox, url_i, backoff, next_connect, down_since
        url = urls[url_i % len(urls)]
        url_i += 1
        try:
            lk = Link(url, 3.0)
            if a.user:
                lk.user, lk.password = a.user, password
            info = lk.handshake()
            if not info.get("headers", False):
                raise nats_pub.NatsError("server without header support")
            lk.streaming = True
            gen += 1
            inbox = f"{inbox_prefix}." + os.urandom(8).hex()
            lk.send(f"SUB {inbox}.* 1\r\n".encode())
            threading.Thread(target=reader, args=(lk, gen, events), daemon=True).start()
        except (nats_pub.NatsError, TimeoutError, OSError, ValueError) as e:
            stats["connect_failures"] += 1
            next_connect = time.monotonic() + backoff
            backoff = min(backoff * 2, 1.0)
            if stats["connect_failures"] % 10 == 1:
                log(f"cannot connect to {url}: {e}; retrying")
            return False
        link = lk
        backoff = 0.1
        if stats["connects"]:
            stats["reconnects"] += 1
            log(
                f"reconnected to {url} after {time.monotonic() - (down_since or time.monotonic()):.1f}s; "
                f"publishing {len(inflight)} unacked again"
            )
        stats["connects"] += 1
        down_since = None
        # Everything in flight on the old connection: publish again.
        for idx, _t in inflight.values():
            again.append(idx)
        inflight.clear()
        return True

    def drop(why: str) -> None:
        nonlocal link, down_since
        if link is not None:
            log(f"connection lost ({why}); reconnecting")
            link.close()
            link = None
            down_since = time.monotonic()
            stats["disconnects"] += 1

    def publish(idx: int) -> bool:
        nonlocal token_seq
        token_seq += 1
        token = str(token_seq)
        hdr, body = bodies[idx]
        cmd = f"HPUB {subject} {inbox}.{token} {len(hdr)} {len(hdr) + len(body)}\r\n".encode()
        try:
            link.send(cmd + hdr + body + b"\r\n")
        except nats_pub.NatsError as e:
            again.appendleft(idx)
            drop(str(e))
            return False
        inflight[token] = (idx, time.monotonic())
        return True

    last_progress = started
    while n_acked < n:
        now = time.monotonic()
        if now >= deadline:
            log(f"gave up after {a.timeout:.0f}s with {n - n_acked} of {n} unacked")
            break
        if link is None:
            if now >= next_connect and not connect():
                time.sleep(max(0.0, min(next_connect - time.monotonic(), 0.2)))
                continue
            if link is None:
                time.sleep(0.05)
                continue
        # Retries that waited long enough.
        if later:
            keep = []
            for t, idx in later:
                if t <= now:
                    again.append(idx)
                else:
                    keep.append((t, idx))
            later = keep
        # Acks that did not come: publish again (same Nats-Msg-Id).
        if inflight:
            expired = [tok for tok, (_i, t) in inflight.items() if now - t > a.ack_timeout]
            for tok in expired:
                idx, _t = inflight.pop(tok)
                if not acked[idx]:
                    stats["ack_timeouts"] += 1
                    again.append(idx)
        # Send.
        while link is not None and len(inflight) < a.window and (again or fresh):
            if again:
                idx = again.popleft()
                if acked[idx]:
                    continue
                stats["republished"] += 1
                publish(idx)
                continue
            if a.rate > 0 and started + first_sent / a.rate > time.monotonic():
                break
            idx = fresh.popleft()
            first_sent += 1
            publish(idx)
        if link is not None and now - last_ping > 2.0:
            last_ping = now
            try:
                link.send(b"PING\r\n")
            except nats_pub.NatsError as e:
                drop(str(e))
        # Replies.
        wait = 0.05
        if a.rate > 0 and fresh and len(inflight) < a.window:
            wait = max(0.0, min(wait, started + first_sent / a.rate - time.monotonic()))
        try:
            ev = events.get(timeout=wait)
        except queue.Empty:
            ev = None
        while ev is not None:
            if ev[1] == gen:
                if ev[0] == "lost":
                    drop(ev[2])
                else:
                    _k, _g, subj, hdrs, data = ev
                    tok = subj.rsplit(".", 1)[-1]
                    entry = inflight.pop(tok, None)
                    if entry is not None and not acked[entry[0]]:
                        idx = entry[0]
                        status, text = nats_pub.parse_status(hdrs) if hdrs else (None, "")
                        doc = None
                        if status is None:
                            try:
                                doc = json.loads(data)
                            except ValueError:
                                doc = None
                        if isinstance(doc, dict) and "seq" in doc and "error" not in doc:
                            acked[idx] = True
                            n_acked += 1
                            if doc.get("duplicate"):
                                stats["duplicate_acks"] += 1
                            pid, frm, to, amount = plan[idx]
                            out.write(f"{pid}\t{frm}\t{to}\t{amount}\n")
                        else:
                            why = f"status {status} {text}".strip() if status else (data[:200].decode(errors="replace"))
                            stats["error_replies"] += 1
                            if stats["error_replies"] % 50 == 1:
                                log(f"publish of {plan[idx][0]} not acked ({why}); retrying")
                            later.append((time.monotonic() + 0.25, idx))
            try:
                ev = events.get_nowait()
            except queue.Empty:
                ev = None
        if a.progress and time.monotonic() - last_progress >= a.progress:
            last_progress = time.monotonic()
            log(f"{n_acked}/{n} acked, {len(inflight)} in flight, {time.monotonic() - started:.0f}s")

    elapsed = time.monotonic() - started
    if link is not None:
        link.close()
    out.close()
    summary = {
        "planned": n,
        "acked": n_acked,
        "unacked": n - n_acked,
        "elapsed_s": round(elapsed, 2),
        "rate_per_s": round(n_acked / elapsed, 1) if elapsed > 0 else None,
        **{k: v for k, v in sorted(stats.items())},
    }
    if a.stats:
        with open(a.stats, "w") as f:
            json.dump(summary, f)
    log(
        f"acked {n_acked}/{n} in {elapsed:.1f}s "
        + " ".join(f"{k}={v}" for k, v in sorted(stats.items()) if k != "connects")
    )
    return 0 if n_acked == n else 1


# ---------------------------------------------------------------------------
# falcon CLI helpers
# ---------------------------------------------------------------------------


def falcon_json(a, *args: str, timeout: float = 30.0, check: bool = True):
    proc = subprocess.run(
        [a.falcon, "--json", *args], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0 and check:
        raise RuntimeError(f"falcon {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    try:
        return json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError as e:
        raise RuntimeError(f"falcon {' '.join(args)}: not JSON: {proc.stdout[:200]!r}") from e


def read_acked(path: str) -> dict[str, tuple[str, str, Decimal]]:
    rows = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 4:
                rows[parts[0]] = (parts[1], parts[2], Decimal(parts[3]))
    return rows


def sagas_by_id(a) -> dict[str, dict]:
    rows = falcon_json(a, "saga", "list", "--limit", "100000000", timeout=60)
    return {r.get("payment_id") or r["saga_id"]: r for r in rows if r.get("kind", "payment") == "payment"}


def backlog(doc: dict) -> int:
    ob = (doc or {}).get("counts", {}).get("outbox_backlog", {})
    return sum(int(v) for v in ob.values()) if isinstance(ob, dict) else int(ob or 0)


def verify_json(a) -> tuple[int, dict]:
    proc = subprocess.run([a.falcon, "--json", "verify"], capture_output=True, text=True, timeout=60)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise RuntimeError(f"falcon verify exited {proc.returncode}: {proc.stderr.strip()} {proc.stdout[:200]!r}")
    return proc.returncode, doc


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


# ---------------------------------------------------------------------------
# settle
# ---------------------------------------------------------------------------


def stream_state(a, saga_id: str) -> dict | None:
    """The saga as `falcon saga show` folds it from FALCON_EVT (not the view)."""
    try:
        doc = falcon_json(a, "saga", "show", saga_id, timeout=30)
    except (RuntimeError, subprocess.TimeoutExpired):
        return None
    return doc if isinstance(doc, dict) else None


def stream_states(a, saga_ids: list[str]) -> dict[str, dict | None]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(saga_ids, pool.map(lambda i: stream_state(a, i), saga_ids)))


def table_terminal(doc: dict, n: int) -> bool:
    """verify's payments_by_state (the payment actor's own table): at least
    n payments, every one completed or failed."""
    by_state = (doc or {}).get("counts", {}).get("payments_by_state") or {}
    return set(by_state) <= {"completed", "failed"} and sum(int(v) for v in by_state.values()) >= n


def cmd_settle(a) -> int:
    ids = read_acked(a.acked)
    started = time.monotonic()
    deadline = started + a.deadline
    last_note = 0.0
    errors = 0
    pending: list[str] = list(ids)
    table_ok_since: float | None = None
    checked_at = 0.0
    stale: dict[str, str] = {}  # id -> terminal state per FALCON_EVT, not terminal in saga list
    bl = None
    table_ok = False

    def save_stale() -> None:
        if a.stale_out:
            with open(a.stale_out, "w") as f:
                json.dump(stale, f)

    while True:
        if a.pids_file and os.path.exists(a.pids_file):
            with open(a.pids_file) as f:
                for line in f:
                    name, _, pid = line.strip().rpartition(" ")
                    if pid.isdigit() and not pid_alive(int(pid)):
                        log(f"settle: {name or 'process'} (pid {pid}) is gone")
                        save_stale()
                        return 2
        now = time.monotonic()
        try:
            sagas = sagas_by_id(a)
            pending = [i for i in ids if not sagas.get(i, {}).get("terminal") and i not in stale]
            _rc, doc = verify_json(a)
            bl = backlog(doc)
            table_ok = table_terminal(doc, len(ids))
            if not pending and bl == 0:
                save_stale()
                log(
                    f"settle: all {len(ids)} terminal, outbox empty, after {time.monotonic() - started:.1f}s"
                    + (f" ({len(stale)} only per saga show, not per saga list)" if stale else "")
                )
                return 0
            # The payment actor's table says every payment is terminal and
            # the outboxes are empty, for a while (a few ack waits), but
            # saga list (a read model) does not: ask the event stream about
            # those sagas (a read model that missed an event shows a state
            # the saga has left).
            if table_ok and bl == 0:
                table_ok_since = table_ok_since or now
                if now - table_ok_since >= a.stale_after and now - checked_at >= 5.0:
                    checked_at = now
                    for i, st in stream_states(a, pending).items():
                        if st and st.get("terminal"):
                            stale[i] = st.get("state", "?")
                    examples = ", ".join(f"{i} ({sagas.get(i, {}).get('state', 'absent')})" for i in list(stale)[:3])
                    log(f"settle: {len(stale)} sagas terminal in FALCON_EVT (saga show) but not in saga list, e.g. {examples}")
                    continue
            else:
                table_ok_since = None
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            errors += 1
            if errors % 10 == 1:
                log(f"settle: {e}")
        now = time.monotonic()
        if now >= deadline:
            break
        if now - last_note >= 5.0:
            last_note = now
            log(
                f"settle: {len(ids) - len(pending)}/{len(ids)} terminal in saga list"
                + (f", outbox backlog {bl}" if bl is not None else "")
                + (", payments table all terminal" if table_ok else "")
                + f", {now - started:.0f}s"
            )
        time.sleep(a.interval)
    save_stale()
    log(f"settle: deadline of {a.deadline:.0f}s passed: {len(pending)} not terminal, outbox backlog {bl}")
    try:
        sagas = sagas_by_id(a)
        missing = [i for i in pending if i not in sagas]
        states = collections.Counter(sagas[i]["state"] for i in pending if i in sagas)
        log(f"settle: not terminal by state: {dict(states)}; never accepted (no saga): {len(missing)}")
        log(f"settle: first not terminal: {' '.join(pending[:10])}")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        log(f"settle: {e}")
    return 1


# ---------------------------------------------------------------------------
# balances / report
# ---------------------------------------------------------------------------


def wallet_balances(a, wallets: list[str]) -> dict[str, dict]:
    return {w: falcon_json(a, "wallet", "balance", w) for w in wallets}


def cmd_balances(a) -> int:
    wallets = [w for w in a.wallets.split(",") if w]
    with open(a.out, "w") as f:
        json.dump(wallet_balances(a, wallets), f, indent=1)
    return 0


def minor(doc: dict, key: str) -> int:
    return int(doc[f"{key}_minor"])


def cmd_report(a) -> int:
    ids = read_acked(a.acked)
    before = json.load(open(a.before))
    problems: list[str] = []
    sagas = sagas_by_id(a)
    vrc, vdoc = verify_json(a)
    after = wallet_balances(a, list(before))
    try:
        dlq = falcon_json(a, "dlq", "list") or []
    except RuntimeError as e:
        problems.append(f"dlq list failed: {e}")
        dlq = []

    # Sagas settle found terminal in FALCON_EVT but not in saga list: ask
    # saga show again, and count them by what the event stream says.
    stale: dict[str, str] = {}
    unsure = [i for i in ids if not sagas.get(i, {}).get("terminal")]
    if unsure:
        for i, st in stream_states(a, unsure).items():
            if st and st.get("terminal"):
                stale[i] = f"{sagas.get(i, {}).get('state', 'absent')}->{st.get('state', '?')}"
                row = dict(sagas.get(i) or {"from_wallet": ids[i][0], "to_wallet": ids[i][1], "amount": str(ids[i][2])})
                reason = row.get("reason")
                for step in st.get("steps") or []:
                    m = re.search(r"failed \(([a-z_]+)\)", step.get("detail") or "")
                    if m:
                        reason = m.group(1)
                row.update(state=st.get("state"), terminal=True, reason=reason)
                sagas[i] = row
    if stale:
        problems.append(
            f"saga list (the payment-view read model) shows {len(stale)} payments as not terminal that "
            f"FALCON_EVT (saga show) shows terminal (list state->stream state): "
            + " ".join(f"{i}:{states}" for i, states in list(stale.items())[:5])
        )

    completed = failed = 0
    lost: list[str] = []
    reasons = collections.Counter()
    paid = collections.Counter()  # minor units by payer (completed payments)
    received = collections.Counter()
    mismatched = []
    for pid, (frm, to, amount) in ids.items():
        s = sagas.get(pid)
        if not s or not s.get("terminal"):
            lost.append(pid)
            continue
        if (s.get("from_wallet"), s.get("to_wallet"), Decimal(s.get("amount", "0"))) != (frm, to, amount):
            mismatched.append(pid)
        if s["state"] == "completed":
            completed += 1
            paid[frm] += int(amount * 100)
            received[to] += int(amount * 100)
        elif s["state"] == "failed":
            failed += 1
            reasons[s.get("reason") or "?"] += 1
        else:
            lost.append(pid)  # terminal but neither completed nor failed: not expected here
    # Sagas not acked to the driver (a publish whose ack was lost and that
    # the driver gave up on) still count for the money: every completed
    # payment in the database must have moved its amount exactly once.
    stray = [k for k, s in sagas.items() if k not in ids and not s.get("terminal")]
    for k, s in sagas.items():
        if k not in ids and s.get("state") == "completed":
            cents = int(Decimal(s["amount"]) * 100)
            paid[s["from_wallet"]] += cents
            received[s["to_wallet"]] += cents

    violations = vdoc.get("violations", []) or []
    counts = vdoc.get("counts", {})
    bad_wallets = []
    for w, b in before.items():
        aft = after[w]
        change = minor(aft, "balance") - minor(b, "balance")
        expect = received[w] - paid[w]
        if change != expect:
            bad_wallets.append(f"{w}:{change}!={expect}")
        if minor(aft, "held") != 0:
            problems.append(f"wallet {w} still holds {aft['held']}")
    payers = {frm for frm, _to, _amt in ids.values()} | {s["from_wallet"] for s in sagas.values() if s.get("from_wallet")}
    debited = sum(minor(before[w], "balance") - minor(after[w], "balance") for w in payers if w in before)
    total_completed = sum(paid.values())
    bl = backlog(vdoc)
    dlq_depth = int(counts.get("dlq_depth", len(dlq)) or 0)
    double_applied = len(violations)
    money_delta = debited - total_completed
    # The payments table (verify) and the saga view (saga list) must agree.
    by_state_view = collections.Counter(s["state"] for s in sagas.values() if s.get("kind", "payment") == "payment")
    by_state_db = {k: int(v) for k, v in (counts.get("payments_by_state") or {}).items()}
    if by_state_db and dict(by_state_view) != by_state_db:
        problems.append(f"payments by state: verify (payments table) {by_state_db} != saga list {dict(by_state_view)}")

    if lost:
        problems.append(f"{len(lost)} driven payments not terminal, e.g. {' '.join(lost[:5])}")
    if mismatched:
        problems.append(f"{len(mismatched)} payments stored with other fields than sent, e.g. {mismatched[:5]}")
    if violations:
        problems.append(f"verify (exit {vrc}): {len(violations)} violations: " + json.dumps(violations[:5]))
    elif vrc != 0:
        problems.append(f"verify exited {vrc}")
    if bad_wallets:
        problems.append("balance change != completed payments (minor units): " + " ".join(bad_wallets[:8]))
    if debited != total_completed:
        problems.append(f"debited from payers {debited} != sum of completed payments {total_completed} (minor units)")
    if bl:
        problems.append(f"outbox backlog {bl}")
    if dlq_depth:
        subj = collections.Counter((d.get("original_subject") or d.get("subject") or "?") for d in dlq if isinstance(d, dict))
        problems.append(f"{dlq_depth} dead letters: {dict(subj.most_common(5))}")
    if stray:
        problems.append(f"{len(stray)} other sagas not terminal, e.g. {stray[:5]}")
    provider_delta = None
    if a.provider_url:
        # What the settlement provider holds as charged (voids excluded)
        # must be exactly the completed payments: each charged once, to the
        # cent, whatever was killed between the charge and its record.
        completed_all = sum(1 for s in sagas.values() if s.get("state") == "completed" and s.get("kind", "payment") == "payment")
        try:
            count, amount = provider_charged(a.provider_url, a.provider_key_file, "USD")
            provider_delta = amount - total_completed
            if (count, amount) != (completed_all, total_completed):
                problems.append(
                    f"the provider charged {count} payments, {amount} cents; {completed_all} completed, {total_completed} cents"
                )
        except Exception as e:  # an unreachable provider is a FAIL, not a crash
            problems.append(f"the provider's totals could not be read: {e}")
    if a.driver_stats and os.path.exists(a.driver_stats):
        ds = json.load(open(a.driver_stats))
        if ds.get("unacked"):
            problems.append(f"the driver could not publish {ds['unacked']} of {ds['planned']} payments")
    problems += [p for p in (a.problem or []) if p]

    ok = not problems
    extra = " ".join(a.extra or [])
    line = (
        f"VERDICT {a.name}: {'PASS' if ok else 'FAIL'} driven={len(ids)} terminal={completed + failed} "
        f"completed={completed} failed={failed} lost={len(lost)} double_applied={double_applied} "
        f"dlq={dlq_depth} kills={a.kills} elapsed={a.elapsed}s money_delta={money_delta} view_stale={len(stale)}"
        + (f" provider_delta={provider_delta}" if a.provider_url else "")
        + (f" {extra}" if extra else "")
    )
    if reasons:
        print("failed payments by reason: " + ", ".join(f"{k}={v}" for k, v in reasons.most_common()), file=sys.stderr)
    print(
        f"money: completed payments {Decimal(total_completed) / 100} USD, debited from payers "
        f"{Decimal(debited) / 100} USD, credited to payees {Decimal(sum(received.values())) / 100} USD",
        file=sys.stderr,
    )
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(
                {
                    "pass": ok,
                    "lost": lost,
                    "view_stale": stale,
                    "problems": problems,
                    "reasons": dict(reasons),
                    "verify": vdoc,
                    "dlq": dlq[:50],
                },
                f,
                indent=1,
            )
    print(line, flush=True)
    return 0 if ok else 1


# ---------------------------------------------------------------------------


def provider_charged(url: str, key_file: str, currency: str) -> tuple[int, int]:
    """falcon-provider's GET /v1/totals: the count and minor units of the
    charges it holds in `currency` (voided ones excluded)."""
    import urllib.request

    with open(key_file) as f:
        key = f.read().strip()
    req = urllib.request.Request(url.rstrip("/") + "/v1/totals", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        doc = json.loads(r.read(1 << 20))
    for c in doc.get("charged") or []:
        if c.get("currency") == currency:
            return int(c.get("count", 0)), int(c.get("amount_minor", 0))
    return 0, 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    lp = sub.add_parser("load", help="publish payment commands with JetStream acks")
    lp.add_argument("--url", default=os.environ.get("NATS_URL", ""), help="server URL(s), comma-separated")
    lp.add_argument("--count", type=int, required=True)
    lp.add_argument("--rate", type=float, default=0.0, help="new publishes per second (0: unpaced)")
    lp.add_argument("--window", type=int, default=64, help="publishes in flight at most")
    lp.add_argument("--ack-timeout", type=float, default=2.0, help="seconds before an unacked publish is sent again")
    lp.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    lp.add_argument("--prefix", default="chaos")
    lp.add_argument("--user", help="connect as this password client (the principal of the commands)")
    lp.add_argument("--password-file", help="its password (falcon auth init --password-client)")
    lp.add_argument("--payers", required=True, help="comma-separated wallet ids")
    lp.add_argument("--payees", required=True, help="comma-separated wallet ids")
    lp.add_argument("--currency", default="USD")
    lp.add_argument("--amount-min", default="0.01")
    lp.add_argument("--amount-max", default="5.00")
    lp.add_argument("--seed", type=int, default=1)
    lp.add_argument("--out", required=True, help="file to append acked payments to")
    lp.add_argument("--stats", help="file for a JSON summary")
    lp.add_argument("--progress", type=float, default=0.0, help="log progress every this many seconds")

    for name in ("settle", "report", "balances"):
        sp = sub.add_parser(name)
        sp.add_argument("--falcon", default=os.environ.get("FALCON_BIN", "falcon"))
        if name == "settle":
            sp.add_argument("--acked", required=True)
            sp.add_argument("--deadline", type=float, default=120.0)
            sp.add_argument("--interval", type=float, default=0.5)
            sp.add_argument("--pids-file", help="lines 'NAME PID' of processes that must stay up")
            sp.add_argument("--stale-after", type=float, default=8.0,
                            help="seconds the same sagas stay not terminal before saga show is asked")
            sp.add_argument("--stale-out", help="JSON file: sagas terminal per saga show but not per saga list")
        elif name == "report":
            sp.add_argument("--name", required=True)
            sp.add_argument("--acked", required=True)
            sp.add_argument("--before", required=True, help="JSON written by `balances` before the load")
            sp.add_argument("--kills", default="0")
            sp.add_argument("--elapsed", default="0")
            sp.add_argument("--driver-stats")
            sp.add_argument("--json-out")
            sp.add_argument("--problem", action="append", help="a problem found by the caller (FAILs the verdict)")
            sp.add_argument("--provider-url", help="falcon-provider's base URL: its charges must equal the completed payments")
            sp.add_argument("--provider-key-file", help="the API key file for --provider-url")
            sp.add_argument("extra", nargs="*", help="key=value pairs appended to the verdict line")
        else:
            sp.add_argument("--wallets", required=True)
            sp.add_argument("--out", required=True)

    a = p.parse_args(argv)
    try:
        return {"load": cmd_load, "settle": cmd_settle, "report": cmd_report, "balances": cmd_balances}[a.cmd](a)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
