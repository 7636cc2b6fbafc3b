#!/usr/bin/env bash
# Measures `falcon verify` on large databases (docs/BENCHMARKS.md, "`falcon
# verify` on 1,000,000 payments"): builds the release `falcon`, starts its
# own JetStream server (the secure set-up, as scripts/bench.sh), creates
# fresh databases and lets `falcon verify` migrate them, fills them with SQL
# (a recursive CTE on SQLite, generate_series on PostgreSQL) with N
# completed payments and everything the invariants want of them, then runs
# `falcon verify` under /usr/bin/time -v and prints its wall time and peak
# RSS; stops everything it started and removes what it created.
#
#   scripts/verify-bench.sh [--db sqlite|postgres] [--payments N] [--wallets N] [--refund-every K] [--runs N]
#
#   --db sqlite        one SQLite file per actor in a temp dir (default)
#   --db postgres      fresh databases on FALCON_PG_HOST:FALCON_PG_PORT
#                      (default 127.0.0.1:5432, user postgres, trust auth),
#                      VACUUM ANALYZEd after the fill (as autovacuum would)
#   --payments N       completed payments (default 1000000), each with its
#                      committed hold and its two-entry transfer
#   --wallets N        wallets the payments go round (default 1000), each
#                      funded by one deposit
#   --refund-every K   every K-th payment fully refunded (default 100;
#                      0 for none): a refund on both sides and its movement
#   --runs N           run `falcon verify` N times on the same data (default 3)
#
# FALCON_BIN=path/to/falcon measures another build (lib.sh's falcon_build
# skips the build then), e.g. the code before a change, built from a
# `git worktree` checkout with its own CARGO_TARGET_DIR.
#
# Examples:
#   scripts/verify-bench.sh
#   scripts/verify-bench.sh --db postgres
#   scripts/verify-bench.sh --payments 100000 --runs 1

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FALCON_ROOT"

db=sqlite payments=1000000 wallets=1000 refund_every=100 runs=3
while (($#)); do
    case $1 in
    --db) db=$2; shift 2 ;;
    --payments) payments=$2; shift 2 ;;
    --wallets) wallets=$2; shift 2 ;;
    --refund-every) refund_every=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    *) falcon_die "unknown argument $1 (see the header of $0)" ;;
    esac
done
for n in "$payments" "$wallets" "$refund_every" "$runs"; do
    [[ $n =~ ^[0-9]+$ ]] || falcon_die "counts must be whole numbers, not '$n'"
done
((payments > 0 && wallets > 0 && runs > 0)) || falcon_die "--payments, --wallets and --runs must be at least 1"
[[ -x /usr/bin/time ]] || falcon_die "/usr/bin/time is missing (Debian: apt-get install time)"
case $db in
sqlite) command -v sqlite3 >/dev/null 2>&1 || falcon_die "sqlite3 is missing (Debian: apt-get install sqlite3)" ;;
postgres) command -v psql >/dev/null 2>&1 || falcon_die "psql is missing (Debian: apt-get install postgresql-client)" ;;
*) falcon_die "--db must be sqlite or postgres" ;;
esac

falcon_build
work=$(mktemp -d "${TMPDIR:-/tmp}/falcon-verify-bench.XXXXXX")
falcon_on_exit "rm -rf $(printf '%q' "$work")"

export FALCON__SECURITY__KEYS_DIR=$work/keys
"$FALCON_BIN" auth init >/dev/null || falcon_die "falcon auth init failed"
{ cat "$FALCON_ROOT/deploy/nats/single.conf"; printf '\ninclude "keys/nats-auth.conf"\n'; } >"$work/nats.conf"
falcon_start_nats "$work/nats" "$work/nats.conf"
export FALCON__NATS__URL=$NATS_URL
export FALCON__HTTP__LISTEN=${FALCON__HTTP__LISTEN-}
export RUST_LOG=${RUST_LOG:-warn}

declare -A url
case $db in
sqlite)
    for a in payment risk wallet recon; do
        url[$a]="sqlite://$work/$a.db?mode=rwc"
    done
    ;;
postgres)
    falcon_ensure_postgres || falcon_die "PostgreSQL is not reachable"
    suffix=$(date +%s)
    for a in payment risk wallet recon; do
        name="falcon_vbench_${a}_$suffix"
        psql -q "$FALCON_PG_URL" -c "CREATE DATABASE $name"
        falcon_on_exit "psql -q $(printf '%q' "$FALCON_PG_URL") -c 'DROP DATABASE IF EXISTS $name' >/dev/null 2>&1 || true"
        url[$a]="${FALCON_PG_URL%/*}/$name"
    done
    ;;
esac
for a in payment risk wallet recon; do
    export "FALCON__${a^^}__DATABASE_URL=${url[$a]}"
done

"$FALCON_BIN" --as provisioning streams apply >/dev/null || falcon_die "streams apply failed"
# Opening the stores migrates them: verify on the empty databases.
"$FALCON_BIN" verify >/dev/null || falcon_die "verify of the empty databases failed"

# SQL for each backend: the numbers 0..N-1 as `s(i)`, and a zero-padded id.
if [[ $db == sqlite ]]; then
    series() { echo "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < $1)"; }
    sql_id() { echo "printf('$1%0$3d', $2)"; }
    run_sql() { sqlite3 "$work/$1.db"; }
    begin="PRAGMA synchronous = OFF; BEGIN;"
else
    series() { echo "WITH s(i) AS (SELECT generate_series(0, $1 - 1))"; }
    sql_id() { echo "'$1' || lpad(($2)::text, $3, '0')"; }
    run_sql() { psql -q -v ON_ERROR_STOP=1 "${url[$1]}" >/dev/null; }
    begin="BEGIN;"
fi
pay=$(sql_id p i 8) ref=$(sql_id r i 8)
from=$(sql_id w "i % $wallets" 6) to=$(sql_id w "(i + 1) % $wallets" 6)
refunded="(i % $refund_every = 0)"
((refund_every > 0)) || refunded="(1 = 0)"
amount=100                  # minor units per payment
deposit=$((amount * (payments / wallets + 1) * 2))  # per wallet: more than its refunds as payee can take
ts="'2026-01-01 00:00:00+00:00'"
# PostgreSQL takes no text for a timestamptz column; SQLite stores text.
[[ $db == postgres ]] && ts="$ts::timestamptz"

falcon_log "filling the $db databases: $payments payments between $wallets wallets, every ${refund_every}th refunded"
fill_started=$SECONDS
run_sql payment <<SQL
$begin
$(series "$payments")
INSERT INTO payments (payment_id, from_wallet, to_wallet, amount_minor, currency, state, reason,
    settlement_id, refunded_minor, created_at, updated_at, deadline_at, principal, capture_started_at)
SELECT $pay, $from, $to, $amount, 'USD', 'completed', NULL, $(sql_id s i 8),
    CASE WHEN $refunded THEN $amount ELSE 0 END, $ts, $ts, $ts, 'bench', $ts FROM s;
$(series "$payments")
INSERT INTO refunds (refund_id, payment_id, amount_minor, currency, state, reason, created_at, updated_at, principal)
SELECT $ref, $pay, $amount, 'USD', 'refunded', NULL, $ts, $ts, 'bench' FROM s WHERE $refunded;
COMMIT;
SQL
run_sql wallet <<SQL
$begin
$(series "$wallets")
INSERT INTO wallets (wallet_id, owner, principal, currency, balance_minor, held_minor, created_at, updated_at)
SELECT $(sql_id w i 6), 'bench', 'bench', 'USD', 0, 0, $ts, $ts FROM s;
$(series "$wallets")
INSERT INTO deposits (reference, wallet_id, amount_minor, currency, created_at)
SELECT $(sql_id d i 6), $(sql_id w i 6), $deposit, 'USD', $ts FROM s;
INSERT INTO wallet_circulation (currency, deposited_minor, updated_at) VALUES ('USD', $((deposit * wallets)), $ts);
$(series "$wallets")
INSERT INTO ledger_entries (movement_id, account, amount_minor, currency, created_at)
SELECT 'deposit:' || $(sql_id d i 6), $(sql_id w i 6), $deposit, 'USD', $ts FROM s
UNION ALL SELECT 'deposit:' || $(sql_id d i 6), '@funding', -$deposit, 'USD', $ts FROM s;
$(series "$payments")
INSERT INTO holds (payment_id, wallet_id, to_wallet, amount_minor, refunded_minor, currency, state, reason, created_at, updated_at)
SELECT $pay, $from, $to, $amount, CASE WHEN $refunded THEN $amount ELSE 0 END, 'USD', 'committed', NULL, $ts, $ts FROM s;
$(series "$payments")
INSERT INTO ledger_entries (movement_id, account, amount_minor, currency, created_at)
SELECT 'transfer:' || $pay, $from, -$amount, 'USD', $ts FROM s
UNION ALL SELECT 'transfer:' || $pay, $to, $amount, 'USD', $ts FROM s;
$(series "$payments")
INSERT INTO wallet_refunds (refund_id, payment_id, amount_minor, currency, state, created_at)
SELECT $ref, $pay, $amount, 'USD', 'committed', $ts FROM s WHERE $refunded;
$(series "$payments")
INSERT INTO ledger_entries (movement_id, account, amount_minor, currency, created_at)
SELECT 'refund:' || $ref, $to, -$amount, 'USD', $ts FROM s WHERE $refunded
UNION ALL SELECT 'refund:' || $ref, $from, $amount, 'USD', $ts FROM s WHERE $refunded;
UPDATE wallets SET balance_minor = (SELECT SUM(amount_minor) FROM ledger_entries WHERE account = wallets.wallet_id);
COMMIT;
SQL
if [[ $db == postgres ]]; then
    for a in payment wallet; do echo "VACUUM ANALYZE;" | run_sql "$a"; done
fi
falcon_log "filled in $((SECONDS - fill_started)) s"

falcon_log "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo); db $db; falcon $FALCON_BIN"
for ((r = 1; r <= runs; r++)); do
    /usr/bin/time -v -o "$work/time.txt" "$FALCON_BIN" verify >"$work/verify.txt" 2>&1 ||
        { cat "$work/verify.txt" >&2; falcon_die "falcon verify failed on consistent data"; }
    grep -q '^verify: ok' "$work/verify.txt" || { cat "$work/verify.txt" >&2; falcon_die "falcon verify did not say ok"; }
    ((r == 1)) && sed -n '1,3p' "$work/verify.txt" >&2
    wall=$(sed -n 's/^.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time.txt")
    rss_kb=$(sed -n 's/^.*Maximum resident set size (kbytes): //p' "$work/time.txt")
    cpu=$(awk -F': ' '/User time/ { u = $2 } /System time/ { s = $2 } END { printf "%.1f", u + s }' "$work/time.txt")
    printf 'verify run %d of %d (%s, %d payments): wall %s, cpu %s s, peak RSS %d MB\n' \
        "$r" "$runs" "$db" "$payments" "$wall" "$cpu" "$((rss_kb / 1024))"
done
