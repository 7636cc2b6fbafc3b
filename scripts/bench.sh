#!/usr/bin/env bash
# Reproduces the numbers in docs/BENCHMARKS.md: starts its own JetStream
# server, fresh databases, and runs `falcon bench --spawn` (release build)
# against them, in the secure set-up (identities, permissions, signed
# events); stops everything it started.
#
#   scripts/bench.sh [--db sqlite|postgres] [--durable] [--runs N] [--processes N] [-- BENCH ARGS...]
#
#   --db sqlite      one SQLite file per actor in a temp dir (default)
#   --db postgres    fresh databases on FALCON_PG_HOST:FALCON_PG_PORT
#                    (default 127.0.0.1:5432, user postgres, trust auth)
#   --durable        nats-server with `jetstream { sync_interval: always }`
#   --runs N         repeat the bench N times on the same set-up (default 1);
#                    each run prints its report, the last line of each is
#                    `invariants: ok` when money is conserved
#   --processes N    instead of `--spawn`, start N `falcon run` processes on
#                    the same databases and streams and bench them; their
#                    logs are searched for `deadlock detected` afterwards
#   BENCH ARGS       passed to `falcon bench` (default: --concurrency 256
#                    --payments 5000 --warmup 500)
#
# Examples:
#   scripts/bench.sh --runs 3
#   scripts/bench.sh --db postgres --runs 3
#   scripts/bench.sh --durable
#   scripts/bench.sh --db postgres --processes 2
#   scripts/bench.sh -- --rate 100 --payments 3000
#   scripts/bench.sh -- --concurrency 10000 --payments 20000 --warmup 0

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FALCON_ROOT"

db=sqlite durable=0 runs=1 processes=0 bench_args=()
while (($#)); do
    case $1 in
    --db) db=$2; shift 2 ;;
    --durable) durable=1; shift ;;
    --runs) runs=$2; shift 2 ;;
    --processes) processes=$2; shift 2 ;;
    --) shift; bench_args=("$@"); break ;;
    *) falcon_die "unknown argument $1 (see the header of $0)" ;;
    esac
done
((${#bench_args[@]})) || bench_args=(--concurrency 256 --payments 5000 --warmup 500)

falcon_build
work=$(mktemp -d "${TMPDIR:-/tmp}/falcon-bench.XXXXXX")
falcon_on_exit "rm -rf $(printf '%q' "$work")"

# The secure set-up, as in production: identities, permissions, signed
# events (falcon auth init into the work dir; the server includes its
# authorization).
export FALCON__SECURITY__KEYS_DIR=$work/keys
"$FALCON_BIN" auth init >/dev/null || falcon_die "falcon auth init failed"
base=$FALCON_ROOT/deploy/nats/single.conf
((durable)) && base=$FALCON_ROOT/deploy/nats/durable.conf
{ cat "$base"; printf '\ninclude "keys/nats-auth.conf"\n'; } >"$work/nats.conf"
falcon_start_nats "$work/nats" "$work/nats.conf"
export FALCON__NATS__URL=$NATS_URL
export FALCON__HTTP__LISTEN=${FALCON__HTTP__LISTEN-}
export RUST_LOG=${RUST_LOG:-warn}

case $db in
sqlite)
    for a in payment risk wallet; do
        export "FALCON__${a^^}__DATABASE_URL=sqlite://$work/$a.db?mode=rwc"
    done
    ;;
postgres)
    falcon_ensure_postgres || falcon_die "PostgreSQL is not reachable"
    suffix=$(date +%s)
    for a in payment risk wallet; do
        name="falcon_bench_${a}_$suffix"
        psql -q "$FALCON_PG_URL" -c "CREATE DATABASE $name"
        falcon_on_exit "psql -q $(printf '%q' "$FALCON_PG_URL") -c 'DROP DATABASE IF EXISTS $name' >/dev/null 2>&1 || true"
        export "FALCON__${a^^}__DATABASE_URL=${FALCON_PG_URL%/*}/$name"
    done
    ;;
*) falcon_die "--db must be sqlite or postgres" ;;
esac

falcon_log "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1); db $db; nats sync_interval $( ((durable)) && echo always || echo default)"
if ((processes == 0)); then
    for ((i = 1; i <= runs; i++)); do
        falcon_log "run $i of $runs: falcon bench --spawn ${bench_args[*]}"
        "$FALCON_BIN" bench --spawn "${bench_args[@]}"
    done
    exit 0
fi

# Several processes: provision once, start them, wait until each is ready.
"$FALCON_BIN" --as provisioning streams apply >/dev/null || falcon_die "streams apply failed"
pids=()
for ((p = 1; p <= processes; p++)); do
    port=$(falcon_free_port)
    FALCON__NODE=bench-$p FALCON__HTTP__LISTEN=127.0.0.1:$port \
        falcon_start_bg "falcon run $p" "$work/run-$p.log" "$FALCON_BIN" run
    pids+=("$FALCON_BG_PID")
    falcon_wait_http "http://127.0.0.1:$port/health/ready" 60 ||
        falcon_die "falcon run $p did not become ready: $(tail -5 "$work/run-$p.log")"
done
for ((i = 1; i <= runs; i++)); do
    falcon_log "run $i of $runs: $processes processes, falcon bench ${bench_args[*]}"
    "$FALCON_BIN" bench --pid "${pids[0]}" "${bench_args[@]}"
done
deadlocks=$(cat "$work"/run-*.log | grep -c "deadlock detected" || true)
falcon_log "processes' logs: $deadlocks lines with 'deadlock detected'"
