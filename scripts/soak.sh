#!/usr/bin/env bash
# The soak of docs/BENCHMARKS.md: one `falcon run` (all four actors, release
# build) against its own JetStream server and a `falcon-provider` process,
# in the secure set-up, driven by `falcon bench` for a million payments (or
# what --payments says), while scripts/soak.py samples what the run is
# made of: sagas ended, the resident memory of each process, the rows of
# every table of every database. At the end: `falcon verify`, `falcon
# recon`, and the plot (SVG) with its summary. Stops everything it started.
#
#   scripts/soak.sh [--db sqlite|postgres] [--payments N] [--interval S] [--out DIR] [-- BENCH ARGS...]
#
#   --db sqlite     one SQLite file per actor (default); postgres: fresh
#                   databases on FALCON_PG_HOST:FALCON_PG_PORT
#   --payments N    payments driven (default 1000000)
#   --interval S    seconds between samples (default 30; each sample counts
#                   every table's rows, which costs the machine a little)
#   --out DIR       where soak.csv, soak.svg and the logs go (default a new
#                   directory under ${TMPDIR:-/tmp})
#   BENCH ARGS      more `falcon bench` arguments (default: --concurrency
#                   256 --wallets 1024)
#
# Retention is short, so that a run of half an hour shows it at work: inbox
# and published outbox rows are kept 300 s (the least the settings allow),
# pruned every 30 s; FALCON_EVT and FALCON_CMD keep an hour (the least) and
# are given room for it. The business record (payments, ledger, holds, the
# saga history, the reconciliation facts, the provider's ledger) is kept,
# as in production: it grows with the payments, linearly.
#
# Example: scripts/soak.sh --out /var/tmp/soak-sqlite

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FALCON_ROOT"

db=sqlite payments=1000000 interval=30 out="" bench_args=()
while (($#)); do
    case $1 in
    --db) db=$2; shift 2 ;;
    --payments) payments=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --) shift; bench_args=("$@"); break ;;
    *) falcon_die "unknown argument $1 (see the header of $0)" ;;
    esac
done
[[ $payments =~ ^[1-9][0-9]*$ ]] || falcon_die "--payments must be a positive number"
((${#bench_args[@]})) || bench_args=(--concurrency 256 --wallets 1024)

falcon_build
if [[ -z $out ]]; then
    out=$(mktemp -d "${TMPDIR:-/tmp}/falcon-soak.XXXXXX")
else
    mkdir -p "$out"
fi
work=$out/work
rm -rf "$work"
mkdir -p "$work"
# The data of a million payments is many gigabytes: removed at the end,
# the samples, the plot and the logs stay in --out.
falcon_on_exit "rm -rf $(printf '%q' "$work/nats") $(printf '%q' "$work")/*.db $(printf '%q' "$work")/*.db-* $(printf '%q' "$work/provider/ledger.db")*"

export FALCON__SECURITY__KEYS_DIR=$work/keys
"$FALCON_BIN" auth init >/dev/null || falcon_die "falcon auth init failed"
# The single-node file, with room on disk for an hour of a million
# payments' messages, and the generated authorization.
{ sed 's/^\( *max_file_store:\).*/\1 64GB/' deploy/nats/single.conf; printf '\ninclude "keys/nats-auth.conf"\n'; } >"$work/nats.conf"
grep -q 'max_file_store: 64GB' "$work/nats.conf" || falcon_die "deploy/nats/single.conf has no max_file_store to raise"
falcon_start_nats "$work/nats" "$work/nats.conf"
export FALCON__NATS__URL=$NATS_URL
export RUST_LOG=${RUST_LOG:-warn}

export FALCON__RETENTION__INBOX_KEEP_S=300 FALCON__RETENTION__OUTBOX_KEEP_S=300 FALCON__RETENTION__INTERVAL_S=30
export FALCON__STREAMS__CMD_MAX_AGE_S=3600 FALCON__STREAMS__EVT_MAX_AGE_S=3600
export FALCON__STREAMS__CMD_MAX_BYTES=$((8 << 30)) FALCON__STREAMS__EVT_MAX_BYTES=$((40 << 30))

dbs=()
case $db in
sqlite)
    for a in payment risk wallet recon; do
        export "FALCON__${a^^}__DATABASE_URL=sqlite://$work/$a.db?mode=rwc"
        dbs+=(--db "$a=sqlite://$work/$a.db")
    done
    ;;
postgres)
    falcon_ensure_postgres || falcon_die "PostgreSQL is not reachable"
    suffix=$(date +%s)
    for a in payment risk wallet recon; do
        name="falcon_soak_${a}_$suffix"
        psql -q "$FALCON_PG_URL" -c "CREATE DATABASE $name"
        falcon_on_exit "psql -q $(printf '%q' "$FALCON_PG_URL") -c 'DROP DATABASE IF EXISTS $name' >/dev/null 2>&1 || true"
        export "FALCON__${a^^}__DATABASE_URL=${FALCON_PG_URL%/*}/$name"
        dbs+=(--db "$a=${FALCON_PG_URL%/*}/$name")
    done
    ;;
*) falcon_die "--db must be sqlite or postgres" ;;
esac

falcon_start_provider "$work/provider"
dbs+=(--db "provider=sqlite://$work/provider/ledger.db")

"$FALCON_BIN" --as provisioning streams apply >/dev/null || falcon_die "streams apply failed"
port=$(falcon_free_port)
FALCON__HTTP__LISTEN=127.0.0.1:$port falcon_start_bg "falcon run" "$out/run.log" "$FALCON_BIN" run
run_pid=$FALCON_BG_PID
falcon_wait_http "http://127.0.0.1:$port/health/ready" 60 ||
    falcon_die "falcon run did not become ready: $(tail -5 "$out/run.log")"

falcon_log "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1); db $db; $payments payments; samples every ${interval}s into $out/soak.csv"
python3 scripts/soak.py sample --out "$out/soak.csv" --interval "$interval" \
    --metrics "http://127.0.0.1:$port/metrics" --stop-file "$work/stop" \
    --pid "falcon-run=$run_pid" --pid "nats-server=$FALCON_NATS_PID" --pid "falcon-provider=$FALCON_PROVIDER_PID" \
    "${dbs[@]}" 2>"$out/sampler.log" &
sampler=$!
falcon_on_exit "touch $(printf '%q' "$work/stop"); wait $sampler 2>/dev/null || true"

rc=0
"$FALCON_BIN" bench --pid "$run_pid" --payments "$payments" --warmup 0 --timeout 10m "${bench_args[@]}" |
    tee "$out/bench.txt" || rc=$?
# One more sample after the pruners' next round, then stop sampling.
sleep $((interval + 30))
touch "$work/stop"
wait "$sampler" || true

falcon_log "falcon verify"
verify_started=$SECONDS
"$FALCON_BIN" verify | tail -5 | tee "$out/verify.txt" || rc=$?
falcon_log "falcon verify took $((SECONDS - verify_started)) s"
falcon_log "falcon doctor (the streams' projection, the databases' settings)"
"$FALCON_BIN" doctor >"$out/doctor.txt" 2>&1 || true
grep -E "retention|autovacuum|connections" "$out/doctor.txt" || true
falcon_log "falcon recon"
"$FALCON_BIN" recon --runs 5 | tee "$out/recon.txt" || rc=$?
du -sh "$work"/* 2>/dev/null | tee "$out/disk.txt"
python3 scripts/soak.py plot "$out/soak.csv" "$out/soak.svg" \
    --title "Soak: $payments payments, $db, $(nproc) cores (scripts/soak.sh)" | tee "$out/summary.txt"
grep -c "deadlock detected\|panicked" "$out/run.log" | sed 's/^/falcon run log: lines with deadlock or panic: /' || true
falcon_log "samples, plot and logs in $out"
exit "$rc"
