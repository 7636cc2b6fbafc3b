#!/usr/bin/env bash
# Reproduces the numbers in docs/BENCHMARKS.md: starts its own JetStream
# server, fresh databases, and runs `falcon bench --spawn` (release build)
# against them, in the secure set-up (identities, permissions, signed
# events); stops everything it started.
#
#   scripts/bench.sh [--db sqlite|postgres] [--durable] [--cluster] [--runs N] [--processes N] [-- BENCH ARGS...]
#
#   --db sqlite      one SQLite file per actor in a temp dir (default)
#   --db postgres    fresh databases on FALCON_PG_HOST:FALCON_PG_PORT
#                    (default 127.0.0.1:5432, user postgres, trust auth)
#   --durable        nats-server with `jetstream { sync_interval: always }`
#   --cluster        three JetStream nodes on loopback (deploy/nats/cluster-*.conf),
#                    R3 streams; with --durable every node fsyncs each write
#   --runs N         repeat the bench N times on the same set-up (default 1);
#                    each run prints its report, the last line of each is
#                    `invariants: ok` when money is conserved
#   --processes N    instead of `--spawn`, start N `falcon run` processes on
#                    the same databases and streams and bench them; their
#                    logs are searched for `deadlock detected` afterwards
#   FALCON_BENCH_ACTORS=payment,risk,wallet (with --processes) runs only
#                    those actors in each process, e.g. to see what one costs
#   BENCH ARGS       passed to `falcon bench` (default: --concurrency 256
#                    --payments 5000 --warmup 500)
#
# Examples:
#   scripts/bench.sh --runs 3
#   scripts/bench.sh --db postgres --runs 3
#   scripts/bench.sh --durable
#   scripts/bench.sh --cluster --durable
#   scripts/bench.sh --db postgres --processes 2
#   scripts/bench.sh -- --rate 100 --payments 3000
#   scripts/bench.sh -- --concurrency 10000 --payments 20000 --warmup 0

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FALCON_ROOT"

db=sqlite durable=0 cluster=0 runs=1 processes=0 bench_args=()
while (($#)); do
    case $1 in
    --db) db=$2; shift 2 ;;
    --durable) durable=1; shift ;;
    --cluster) cluster=1; shift ;;
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
nats_pids=()
if ((cluster)); then
    # Three nodes, each with its copy of deploy/nats/cluster-<i>.conf (plus
    # `sync_interval: always` with --durable, and the authorization), on
    # free ports; flags after -c override the file's ports.
    bin=$(falcon_ensure_nats_server)
    declare -a cport rport
    for i in 1 2 3; do cport[i]=$(falcon_free_port); rport[i]=$(falcon_free_port); done
    routes="nats://127.0.0.1:${rport[1]},nats://127.0.0.1:${rport[2]},nats://127.0.0.1:${rport[3]}"
    for i in 1 2 3; do
        conf=$work/cluster-$i.conf
        if ((durable)); then
            sed 's/^jetstream {$/jetstream {\n  sync_interval: always/' "$FALCON_ROOT/deploy/nats/cluster-$i.conf" >"$conf"
        else
            cp "$FALCON_ROOT/deploy/nats/cluster-$i.conf" "$conf"
        fi
        printf '\ninclude "keys/nats-auth.conf"\n' >>"$conf"
        mkdir -p "$work/nats-$i"
        "$bin" -c "$conf" -js -a 127.0.0.1 -p "${cport[i]}" -sd "$work/nats-$i" \
            --cluster "nats://127.0.0.1:${rport[i]}" --routes "$routes" </dev/null >"$work/nats-$i.log" 2>&1 &
        nats_pids+=($!)
        FALCON_LIVE_PIDS+="$! "
        falcon_on_exit "falcon_stop_pid $! nats-server-$i 15"
    done
    for i in 1 2 3; do
        deadline=$((SECONDS + 30))
        until grep -q 'Server is ready' "$work/nats-$i.log" 2>/dev/null; do
            ((SECONDS < deadline)) || falcon_die "nats-server $i not ready: $(tail -5 "$work/nats-$i.log")"
            sleep 0.05
        done
    done
    export FALCON__NATS__URL="nats://127.0.0.1:${cport[1]},nats://127.0.0.1:${cport[2]},nats://127.0.0.1:${cport[3]}"
    export FALCON__STREAMS__REPLICAS=3
    # The cluster elects its JetStream leader after the nodes are ready.
    deadline=$((SECONDS + 60))
    until "$FALCON_BIN" --as provisioning streams apply >/dev/null 2>&1; do
        ((SECONDS < deadline)) || falcon_die "streams apply on the cluster failed for 60 s"
        sleep 0.5
    done
    falcon_log "three JetStream nodes ready, R3 streams ($FALCON__NATS__URL)"
else
    base=$FALCON_ROOT/deploy/nats/single.conf
    ((durable)) && base=$FALCON_ROOT/deploy/nats/durable.conf
    { cat "$base"; printf '\ninclude "keys/nats-auth.conf"\n'; } >"$work/nats.conf"
    falcon_start_nats "$work/nats" "$work/nats.conf"
    nats_pids=("$FALCON_NATS_PID")
    export FALCON__NATS__URL=$NATS_URL
fi
export FALCON__HTTP__LISTEN=${FALCON__HTTP__LISTEN-}
export RUST_LOG=${RUST_LOG:-warn}

case $db in
sqlite)
    for a in payment risk wallet recon; do
        export "FALCON__${a^^}__DATABASE_URL=sqlite://$work/$a.db?mode=rwc"
    done
    ;;
postgres)
    falcon_ensure_postgres || falcon_die "PostgreSQL is not reachable"
    suffix=$(date +%s)
    for a in payment risk wallet recon; do
        name="falcon_bench_${a}_$suffix"
        psql -q "$FALCON_PG_URL" -c "CREATE DATABASE $name"
        falcon_on_exit "psql -q $(printf '%q' "$FALCON_PG_URL") -c 'DROP DATABASE IF EXISTS $name' >/dev/null 2>&1 || true"
        export "FALCON__${a^^}__DATABASE_URL=${FALCON_PG_URL%/*}/$name"
    done
    ;;
*) falcon_die "--db must be sqlite or postgres" ;;
esac

# CPU seconds used so far by a process (utime + stime), by the PostgreSQL
# server (every live postgres process, plus what the postmaster's exited
# children used), and by the whole machine (busy time of /proc/stat), so
# that each run can say what one saga costs each part.
hz=$(getconf CLK_TCK)
cpu_of_pid() { awk -v hz="$hz" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpu_of_postgres() {
    local total=0 pid stat
    for pid in $(pgrep -x postgres 2>/dev/null); do
        stat=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        # fields after the name: 12 utime, 13 stime, 14 cutime, 15 cstime
        total=$(awk -v t="$total" -v hz="$hz" '{ printf "%.2f", t + ($12 + $13 + $14 + $15) / hz }' <<<"$stat")
    done
    echo "$total"
}
cpu_of_machine() { awk -v hz="$hz" '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }
# Transactions committed or rolled back in this run's databases (PostgreSQL's
# own statistics, flushed by each backend within about a second).
xacts_of_postgres() {
    [[ $db == postgres ]] || { echo 0; return; }
    psql -qtA "$FALCON_PG_URL" -c "SELECT coalesce(sum(xact_commit + xact_rollback), 0) FROM pg_stat_database WHERE datname LIKE 'falcon\_bench\_%\_$suffix'" 2>/dev/null || echo 0
}
cpu_of_nats() {
    local total=0 pid
    for pid in "${nats_pids[@]}"; do total=$(awk -v a="$total" -v b="$(cpu_of_pid "$pid")" 'BEGIN { print a + b }'); done
    echo "$total"
}
cpu_snapshot() { echo "$(cpu_of_machine) $(cpu_of_nats) $(cpu_of_postgres) $(xacts_of_postgres)"; }
# cpu_report BEFORE SAGAS: one line with each part's CPU since BEFORE, in
# total and per saga (SAGAS = warm-up + measured payments of the run).
cpu_report() {
    local before=$1 sagas=$2
    read -r m0 n0 p0 x0 <<<"$before"
    read -r m1 n1 p1 x1 <<<"$(cpu_snapshot)"
    awk -v m="$(awk -v a="$m0" -v b="$m1" 'BEGIN { print b - a }')" \
        -v n="$(awk -v a="$n0" -v b="$n1" 'BEGIN { print b - a }')" \
        -v p="$(awk -v a="$p0" -v b="$p1" 'BEGIN { print b - a }')" -v x="$((x1 - x0))" -v s="$sagas" -v db="$db" 'BEGIN {
        printf "cpu during the run (warm-up included, %d sagas): machine %.1f s (%.0f us/saga); nats-server %.1f s (%.0f us/saga)", s, m, m * 1e6 / s, n, n * 1e6 / s
        if (db == "postgres") printf "; postgresql %.1f s (%.0f us/saga), %d transactions (%.1f/saga, %.0f us each)", p, p * 1e6 / s, x, x / s, x ? p * 1e6 / x : 0
        printf "\n"
    }'
}
# Warm-up plus measured payments, from the bench arguments.
sagas_of_args() {
    local payments=5000 warmup=500 a
    local -a args=("$@")
    for ((a = 0; a < ${#args[@]}; a++)); do
        case ${args[a]} in
        --payments) payments=${args[a + 1]} ;;
        --warmup) warmup=${args[a + 1]} ;;
        esac
    done
    echo $((payments + warmup))
}
sagas=$(sagas_of_args "${bench_args[@]}")

falcon_log "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1); db $db; nats $( ((cluster)) && echo "3-node cluster, R3" || echo "one server"), sync_interval $( ((durable)) && echo always || echo default)"
if ((processes == 0)); then
    for ((i = 1; i <= runs; i++)); do
        falcon_log "run $i of $runs: falcon bench --spawn ${bench_args[*]}"
        before=$(cpu_snapshot)
        "$FALCON_BIN" bench --spawn "${bench_args[@]}"
        falcon_log "$(cpu_report "$before" "$sagas")"
    done
    exit 0
fi

# Several processes: provision once, start them, wait until each is ready.
"$FALCON_BIN" --as provisioning streams apply >/dev/null || falcon_die "streams apply failed"
pids=()
for ((p = 1; p <= processes; p++)); do
    port=$(falcon_free_port)
    FALCON__NODE=bench-$p FALCON__HTTP__LISTEN=127.0.0.1:$port \
        falcon_start_bg "falcon run $p" "$work/run-$p.log" "$FALCON_BIN" run \
        ${FALCON_BENCH_ACTORS:+--actors "$FALCON_BENCH_ACTORS"}
    pids+=("$FALCON_BG_PID")
    falcon_wait_http "http://127.0.0.1:$port/health/ready" 60 ||
        falcon_die "falcon run $p did not become ready: $(tail -5 "$work/run-$p.log")"
done
for ((i = 1; i <= runs; i++)); do
    falcon_log "run $i of $runs: $processes processes, falcon bench ${bench_args[*]}"
    before=$(cpu_snapshot) before_runtime=0
    for pid in "${pids[@]}"; do before_runtime=$(awk -v a="$before_runtime" -v b="$(cpu_of_pid "$pid")" 'BEGIN { print a + b }'); done
    "$FALCON_BIN" bench --pid "${pids[0]}" "${bench_args[@]}"
    falcon_log "$(cpu_report "$before" "$sagas")"
    if [[ $db == postgres ]]; then
        # Each database's share of PostgreSQL's CPU: the CPU of the backends
        # serving it (the processes' pools keep their connections for the
        # run, so what they used since they connected is nearly all of it).
        by_db=$(psql -qtA -F ' ' "$FALCON_PG_URL" -c "SELECT pid, datname FROM pg_stat_activity WHERE datname LIKE 'falcon\_bench\_%\_$suffix'" 2>/dev/null |
            while read -r pid name; do echo "$name $(cpu_of_pid "$pid")"; done |
            awk -v s="$sagas" '{ sub(/^falcon_bench_/, "", $1); sub(/_[0-9]+$/, "", $1); cpu[$1] += $2; n[$1]++ }
                END { for (d in cpu) printf "%s %.1f s over %d connections (%.0f us/saga); ", d, cpu[d], n[d], cpu[d] * 1e6 / s }')
        falcon_log "postgresql by database: ${by_db%; }"
    fi
    after_runtime=0
    for pid in "${pids[@]}"; do after_runtime=$(awk -v a="$after_runtime" -v b="$(cpu_of_pid "$pid")" 'BEGIN { print a + b }'); done
    falcon_log "$(awk -v a="$before_runtime" -v b="$after_runtime" -v s="$sagas" -v n="$processes" 'BEGIN { printf "cpu of all %d falcon run processes: %.1f s (%.0f us/saga)", n, b - a, (b - a) * 1e6 / s }')"
done
deadlocks=$(cat "$work"/run-*.log | grep -c "deadlock detected" || true)
falcon_log "processes' logs: $deadlocks lines with 'deadlock detected'"
