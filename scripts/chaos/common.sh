# shellcheck shell=bash
# Shared by the chaos scripts (scripts/chaos/[1-5]-*.sh). Source it, do not
# run it. It sources scripts/lib.sh (set -euo pipefail, clean-up traps that
# stop every process started here).
#
# A chaos script is self-contained: its own nats-server(s) on free loopback
# ports with temporary stores, its own SQLite databases, `falcon streams
# apply`, `falcon run` with chaos control on, funded wallets, a load of
# payments from scripts/chaos/drive.py, its fault, then it waits (polling,
# with a deadline) until every payment JetStream acknowledged is terminal
# and every outbox is empty, runs `falcon verify`, and prints one line:
#
#   VERDICT <name>: PASS|FAIL driven=.. terminal=.. completed=.. failed=..
#     lost=.. double_applied=.. dlq=.. kills=.. elapsed=..s money_delta=..
#     view_stale=.. mode=short|full [what the scenario adds]
#
# (The fields are explained in drive.py's `report`.) Exit 0 on PASS, 1 on
# FAIL, with the problems found on stderr. Everything lives in a temporary
# directory, removed on PASS and kept (path printed, with the falcon run and
# nats-server logs and, on FAIL, `saga show` and the log lines of the first
# payments at fault) on FAIL or with --keep.
#
# Every process runs with FALCON__CONSUMER__ACK_WAIT_MS=2000 (redeliveries
# after a kill come in 2 s), against a falcon-provider process of the run's
# own that declines FALCON__PROVIDER__DECLINE_BPS=300 (3% of the captures:
# the compensation path), and with a risk velocity limit out of the way; the
# environment may override each. The verdict adds provider_delta: what the
# provider charged less what the completed payments moved, in cents (0, or
# FAIL; FALCON_CHAOS_PROVIDER=simulator runs on the built-in simulator and
# leaves it out). Payments go from 8 payers
# (payer-thin runs out of money: insufficient funds) to 4 payees, 0.01 to
# 5.00 USD each.
#
# Options of every chaos script (chaos_init parses them):
#   --short          a small run (150 payments, a few faults, 15-30 s)
#   --payments N     payments to drive (default 150 short, 2000 full)
#   --rate R         new payments per second (default 15 short, 50 full)
#   --keep           keep the temporary directory (and the PostgreSQL
#                    databases of --db postgres)
#   --db sqlite|postgres
#                    SQLite files in the temporary directory (default), or
#                    fresh PostgreSQL databases on FALCON_PG_HOST:FALCON_PG_PORT
#                    (default 127.0.0.1:5432, user postgres, trust auth),
#                    dropped at the end
#   --partitions N   consumer.partitions of every process (default: the
#                    setting's, 1; FALCON__CONSUMER__PARTITIONS also works)
#   --processes N    `falcon run` processes at once (scenario 5 only;
#                    default 2)
#
# Environment: FALCON_BIN (a built falcon; otherwise `cargo build --release`),
# FALCON_NATS_SERVER, CARGO_TARGET_DIR (see scripts/lib.sh),
# FALCON_CHAOS_SETTLE_S (how long to wait for the payments to settle after
# the load, default 90 short, 240 full).

CHAOS_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$CHAOS_HERE/../lib.sh"

CHAOS_DRIVE="$CHAOS_HERE/drive.py"
CHAOS_PAYERS=(payer-1 payer-2 payer-3 payer-4 payer-5 payer-6 payer-7 payer-thin)
CHAOS_PAYEES=(payee-1 payee-2 payee-3 payee-4)
CHAOS_KILLS=0
CHAOS_EXTRA=()      # key=value pairs appended to the verdict line
CHAOS_PROBLEMS=()   # problems the script found itself (each FAILs the verdict)
declare -A CHAOS_RUN_PID=()

chaos_log() { printf '%s chaos %s: %s\n' "$(date +%H:%M:%S)" "$CHAOS_NAME" "$*" >&2; }

chaos__usage() {
    # The calling script's header comment.
    sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p}' "$0"
}

# chaos_init NAME "$@": options, temporary directory, falcon, nats-server,
# the environment every falcon process of the run shares.
chaos_init() {
    CHAOS_NAME=$1
    shift
    CHAOS_SHORT=0
    CHAOS_KEEP=0
    local payments='' rate='' db=sqlite partitions=''
    CHAOS_PROCESSES=2
    while (($#)); do
        case $1 in
        --short) CHAOS_SHORT=1 ;;
        --payments) payments=${2:?--payments N}; shift ;;
        --payments=*) payments=${1#*=} ;;
        --rate) rate=${2:?--rate R}; shift ;;
        --rate=*) rate=${1#*=} ;;
        --keep) CHAOS_KEEP=1 ;;
        --db) db=${2:?--db sqlite|postgres}; shift ;;
        --db=*) db=${1#*=} ;;
        --partitions) partitions=${2:?--partitions N}; shift ;;
        --partitions=*) partitions=${1#*=} ;;
        --processes) CHAOS_PROCESSES=${2:?--processes N}; shift ;;
        --processes=*) CHAOS_PROCESSES=${1#*=} ;;
        -h | --help) chaos__usage; exit 0 ;;
        *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
        esac
        shift
    done
    if ((CHAOS_SHORT)); then
        CHAOS_PAYMENTS=${payments:-150} CHAOS_RATE=${rate:-15}
        CHAOS_SETTLE_S=${FALCON_CHAOS_SETTLE_S:-90}
    else
        CHAOS_PAYMENTS=${payments:-2000} CHAOS_RATE=${rate:-50}
        CHAOS_SETTLE_S=${FALCON_CHAOS_SETTLE_S:-240}
    fi
    [[ $CHAOS_PAYMENTS =~ ^[1-9][0-9]*$ ]] || { echo "--payments: a positive integer" >&2; exit 2; }
    [[ $db == sqlite || $db == postgres ]] || { echo "--db: sqlite or postgres" >&2; exit 2; }
    [[ -z $partitions || $partitions =~ ^[1-9][0-9]*$ ]] || { echo "--partitions: a positive integer" >&2; exit 2; }
    [[ $CHAOS_PROCESSES =~ ^[2-9]$ ]] || { echo "--processes: 2 to 9" >&2; exit 2; }
    CHAOS_DB=$db
    [[ -z $partitions ]] || export FALCON__CONSUMER__PARTITIONS=$partitions
    CHAOS_EXTRA+=("db=$db" "partitions=${FALCON__CONSUMER__PARTITIONS:-1}")
    CHAOS_MODE=$([[ $CHAOS_SHORT == 1 ]] && echo short || echo full)
    # Seconds the load takes at the chosen rate: the chaos is spread over it.
    # Unpaced (--rate 0) the publishing is over in a moment and the actors
    # work through the backlog at a few hundred payments a second: the chaos
    # is spread over that.
    CHAOS_LOAD_S=$(python3 -c "import sys; n, r = int(sys.argv[1]), float(sys.argv[2]); print(max(1, round(n / r)) if r > 0 else max(5, n // 200))" "$CHAOS_PAYMENTS" "$CHAOS_RATE")

    CHAOS_WORK=$(mktemp -d "${TMPDIR:-/tmp}/falcon-chaos-$CHAOS_NAME.XXXXXX")
    CHAOS_PASSED=0
    CHAOS_VERDICT_DONE=0
    # Registered first, so it runs last (after every process is stopped).
    falcon_on_exit chaos__at_exit

    falcon_build >&2
    CHAOS_NATS_BIN=$(falcon_ensure_nats_server)
    CHAOS_T0=$SECONDS
    chaos_log "$CHAOS_MODE run: $CHAOS_PAYMENTS payments at ${CHAOS_RATE}/s; work dir $CHAOS_WORK"

    mkdir -p "$CHAOS_WORK/db"
    export NO_COLOR=1
    local a name
    for a in payment risk wallet recon; do
        if [[ $db == postgres ]]; then
            falcon_ensure_postgres || chaos_fail "--db postgres: PostgreSQL is not reachable"
            name="falcon_chaos_${a}_$(date +%s)_$$"
            psql -q "$FALCON_PG_URL" -c "CREATE DATABASE $name" || chaos_fail "creating database $name"
            ((CHAOS_KEEP)) ||
                falcon_on_exit "psql -q $(printf '%q' "$FALCON_PG_URL") -c 'DROP DATABASE IF EXISTS $name WITH (FORCE)' >/dev/null 2>&1 || true"
            export "FALCON__${a^^}__DATABASE_URL=${FALCON_PG_URL%/*}/$name"
        else
            export "FALCON__${a^^}__DATABASE_URL=sqlite://$CHAOS_WORK/db/$a.db?mode=rwc"
        fi
    done
    export FALCON__CHAOS__ENABLED=true
    # No HTTP endpoint: several `falcon run` may share this machine.
    export FALCON__HTTP__LISTEN=${FALCON__HTTP__LISTEN-}
    export FALCON__NODE=${FALCON__NODE:-chaos}
    # Messages of a killed actor come back after 2 s, not 30.
    export FALCON__CONSUMER__ACK_WAIT_MS=${FALCON__CONSUMER__ACK_WAIT_MS:-2000}
    # Some captures declined (the compensation path: funds released).
    export FALCON__PROVIDER__DECLINE_BPS=${FALCON__PROVIDER__DECLINE_BPS:-300}
    # Velocity is not under test: hundreds of payments per payer per minute.
    export FALCON__RISK__VELOCITY_COUNT_MAX=${FALCON__RISK__VELOCITY_COUNT_MAX:-100000000}
    # The secure set-up, as in production: every identity's seed, the
    # actors' signing keys and the server's authorization in $CHAOS_WORK/keys.
    # The driver is the password client `chaos`; the CLI's client verbs act
    # as it too, so it owns the wallets it pays from.
    export FALCON__SECURITY__KEYS_DIR=$CHAOS_WORK/keys
    export FALCON__NATS__IDENTITY=chaos
    "$FALCON_BIN" auth init --password-client chaos >/dev/null ||
        chaos_fail "falcon auth init failed"
    : >"$CHAOS_WORK/pids"
    # The settlement provider: a falcon-provider process with its own
    # ledger, which outlives every kill of the actors (the verdict compares
    # what it charged with the payments completed, to the cent).
    # FALCON_CHAOS_PROVIDER=simulator keeps the built-in simulator instead.
    if [[ ${FALCON_CHAOS_PROVIDER:-falcon-provider} == falcon-provider ]]; then
        falcon_start_provider "$CHAOS_WORK/provider" --decline-bps "$FALCON__PROVIDER__DECLINE_BPS" >&2
        CHAOS_EXTRA+=("provider=falcon-provider")
    else
        unset FALCON__PROVIDER__URL FALCON__PROVIDER__API_KEY_FILE
        CHAOS_EXTRA+=("provider=simulator")
    fi
}

# chaos_secure_conf BASE_CONF: prints the path of a copy of BASE_CONF that
# also includes the generated authorization (nats-server resolves an
# include relative to the including file).
chaos_secure_conf() {
    local base=$1 out
    out="$CHAOS_WORK/$(basename "$base" .conf)-secure.conf"
    { cat "$base"; printf '\ninclude "keys/nats-auth.conf"\n'; } >"$out"
    printf '%s\n' "$out"
}

chaos__at_exit() {
    if ((!CHAOS_VERDICT_DONE)); then
        printf 'VERDICT %s: FAIL aborted before the end (see the messages above) elapsed=%ss\n' \
            "$CHAOS_NAME" "$((SECONDS - ${CHAOS_T0:-0}))"
    fi
    if ((CHAOS_PASSED && !CHAOS_KEEP)); then
        rm -rf "$CHAOS_WORK"
    elif [[ -n ${CHAOS_WORK:-} ]]; then
        chaos_log "logs, databases and stores kept in $CHAOS_WORK"
    fi
}

# chaos_fail MESSAGE: a FAIL verdict now (setup went wrong), exit 1.
chaos_fail() {
    chaos_log "$*"
    CHAOS_VERDICT_DONE=1
    printf 'VERDICT %s: FAIL %s elapsed=%ss\n' "$CHAOS_NAME" "$*" "$((SECONDS - CHAOS_T0))"
    exit 1
}

# ---------------------------------------------------------------------------
# nats-server
# ---------------------------------------------------------------------------

# chaos_nats_start NAME PORT STORE_DIR [ARGS...]: nats-server on
# 127.0.0.1:PORT with JetStream in STORE_DIR (ARGS may start with -c CONF),
# waits until it is ready. Sets CHAOS_NATS_PID[NAME]. Log:
# WORK/NAME.N.log, one per start.
declare -A CHAOS_NATS_PID=() CHAOS_NATS_STARTS=()
chaos_nats_start() {
    local name=$1 port=$2 store=$3 log pid deadline n
    shift 3
    n=$((${CHAOS_NATS_STARTS[$name]:-0} + 1))
    CHAOS_NATS_STARTS[$name]=$n
    log="$CHAOS_WORK/$name.$n.log"
    mkdir -p "$store"
    falcon_start_bg "$name" "$log" "$CHAOS_NATS_BIN" "$@" -js -a 127.0.0.1 -p "$port" -sd "$store"
    pid=$FALCON_BG_PID
    deadline=$((SECONDS + ${FALCON_NATS_READY_TIMEOUT_S:-15}))
    until grep -q 'Server is ready' "$log" 2>/dev/null; do
        if ! falcon__pid_alive "$pid"; then
            tail -n 20 "$log" >&2
            chaos_fail "$name exited before it was ready (log $log)"
        fi
        ((SECONDS < deadline)) || chaos_fail "$name not ready within ${FALCON_NATS_READY_TIMEOUT_S:-15}s (log $log)"
        sleep 0.05
    done
    CHAOS_NATS_PID[$name]=$pid
    chaos_log "$name ready on 127.0.0.1:$port (pid $pid)"
}

# chaos_nats_stop NAME: SIGTERM (a clean shutdown), wait for the exit.
chaos_nats_stop() {
    local name=$1 pid=${CHAOS_NATS_PID[$1]:-}
    [[ -n $pid ]] || return 0
    falcon_stop_pid "$pid" "$name" 30
    unset "CHAOS_NATS_PID[$name]"
    chaos_log "$name stopped"
}

# chaos_streams_apply: `falcon streams apply`, retried until the JetStream
# API answers (a fresh cluster elects its meta leader first).
chaos_streams_apply() {
    local deadline=$((SECONDS + 30)) out
    until out=$("$FALCON_BIN" streams apply 2>&1); do
        ((SECONDS < deadline)) || chaos_fail "falcon streams apply keeps failing: $out"
        sleep 0.5
    done
}

# ---------------------------------------------------------------------------
# falcon run
# ---------------------------------------------------------------------------

chaos__write_pids() {
    local k
    : >"$CHAOS_WORK/pids"
    for k in "${!CHAOS_RUN_PID[@]}"; do
        printf 'falcon-run-%s %s\n' "$k" "${CHAOS_RUN_PID[$k]}" >>"$CHAOS_WORK/pids"
    done
}

# chaos_run_start NAME [VAR=VALUE...]: `falcon run` with the extra
# environment, logging to WORK/run-NAME.N.log; waits until its runtime has
# started. Sets CHAOS_RUN_PID[NAME].
declare -A CHAOS_RUN_STARTS=()
chaos_run_start() {
    local name=$1 log pid deadline n
    shift
    n=$((${CHAOS_RUN_STARTS[$name]:-0} + 1))
    CHAOS_RUN_STARTS[$name]=$n
    log="$CHAOS_WORK/run-$name.$n.log"
    falcon_start_bg "falcon run $name" "$log" env "$@" "$FALCON_BIN" run
    pid=$FALCON_BG_PID
    deadline=$((SECONDS + 60))
    until grep -q 'runtime started' "$log" 2>/dev/null; do
        if ! falcon__pid_alive "$pid"; then
            tail -n 30 "$log" >&2
            chaos_fail "falcon run $name exited at start (log $log)"
        fi
        ((SECONDS < deadline)) || chaos_fail "falcon run $name not started within 60s (log $log)"
        sleep 0.05
    done
    CHAOS_RUN_PID[$name]=$pid
    chaos__write_pids
    chaos_log "falcon run $name started (pid $pid, log $(basename "$log"))"
}

# chaos_run_kill9 NAME: kill -9 that `falcon run`, no warning.
chaos_run_kill9() {
    local name=$1 pid=${CHAOS_RUN_PID[$1]:-}
    [[ -n $pid ]] || return 0
    falcon__pid_alive "$pid" || {
        tail -n 30 "$CHAOS_WORK/run-$name.${CHAOS_RUN_STARTS[$name]}.log" >&2
        chaos_fail "falcon run $name (pid $pid) had exited by itself before the kill"
    }
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    FALCON_LIVE_PIDS=${FALCON_LIVE_PIDS/ $pid / }
    unset "CHAOS_RUN_PID[$name]"
    chaos__write_pids
    CHAOS_KILLS=$((CHAOS_KILLS + 1))
    chaos_log "kill -9 falcon run $name (pid $pid)"
}

# chaos_run_stop NAME [TIMEOUT_S]: SIGTERM, as an operator would; a process
# still there after TIMEOUT_S (default 20) is a problem (and gets SIGKILL).
chaos_run_stop() {
    local name=$1 timeout_s=${2:-20} pid=${CHAOS_RUN_PID[$1]:-} deadline t0=$SECONDS
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout_s))
    while falcon__pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if falcon__pid_alive "$pid"; then
        CHAOS_PROBLEMS+=("falcon run $name (pid $pid) still running ${timeout_s}s after SIGTERM")
        chaos_log "falcon run $name (pid $pid) did not stop within ${timeout_s}s of SIGTERM; kill -9"
        kill -KILL "$pid" 2>/dev/null || true
    else
        chaos_log "falcon run $name stopped on SIGTERM in $((SECONDS - t0))s"
    fi
    wait "$pid" 2>/dev/null || true
    FALCON_LIVE_PIDS=${FALCON_LIVE_PIDS/ $pid / }
    unset "CHAOS_RUN_PID[$name]"
    chaos__write_pids
}

# chaos_runs_alive: fail when a `falcon run` exited on its own.
chaos_runs_alive() {
    local k
    for k in "${!CHAOS_RUN_PID[@]}"; do
        if ! falcon__pid_alive "${CHAOS_RUN_PID[$k]}"; then
            tail -n 30 "$CHAOS_WORK/run-$k.${CHAOS_RUN_STARTS[$k]}.log" >&2
            CHAOS_PROBLEMS+=("falcon run $k (pid ${CHAOS_RUN_PID[$k]}) exited by itself")
            return 1
        fi
    done
}

# ---------------------------------------------------------------------------
# wallets and load
# ---------------------------------------------------------------------------

# chaos_wallets: open the payers and payees and fund the payers: about three
# times what the load takes from them, except payer-thin, which gets a third
# of its share and runs dry (insufficient funds: failed payments).
# Then records the balances before the load.
chaos_wallets() {
    local w share big thin pids=() p
    # The load's average amount is 2.50 USD, spread over the payers.
    share=$(((CHAOS_PAYMENTS * 250 / ${#CHAOS_PAYERS[@]} + 99) / 100))
    big=$((share * 3 + 100)) thin=$((share / 3 + 1))
    for w in "${CHAOS_PAYERS[@]}" "${CHAOS_PAYEES[@]}"; do
        "$FALCON_BIN" wallet open "$w" --owner "$w" --currency USD --wait --timeout 60s >/dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || chaos_fail "could not open the wallets"; done
    pids=()
    for w in "${CHAOS_PAYERS[@]}"; do
        "$FALCON_BIN" wallet deposit "$w" "$([[ $w == payer-thin ]] && echo "$thin" || echo "$big").00" \
            --currency USD --reference "fund-$w" --wait --timeout 60s >/dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || chaos_fail "could not fund the wallets"; done
    python3 "$CHAOS_DRIVE" balances --falcon "$FALCON_BIN" \
        --wallets "$(IFS=,; echo "${CHAOS_PAYERS[*]},${CHAOS_PAYEES[*]}")" --out "$CHAOS_WORK/before.json" ||
        chaos_fail "could not read the balances"
    chaos_log "wallets open: ${#CHAOS_PAYERS[@]} payers (${big}.00 USD each, payer-thin ${thin}.00), ${#CHAOS_PAYEES[@]} payees"
}

# chaos_drive_start URLS [drive.py load options...]: the load, in the
# background. Sets CHAOS_DRIVE_PID, CHAOS_DRIVE_T0.
chaos_drive_start() {
    local urls=$1
    shift
    : >"$CHAOS_WORK/acked.tsv"
    falcon_start_bg "drive.py" "$CHAOS_WORK/drive.log" python3 "$CHAOS_DRIVE" load \
        --url "$urls" --count "$CHAOS_PAYMENTS" --rate "$CHAOS_RATE" --prefix "$CHAOS_NAME" \
        --user chaos --password-file "$CHAOS_WORK/keys/chaos.password" \
        --payers "$(IFS=,; echo "${CHAOS_PAYERS[*]}")" --payees "$(IFS=,; echo "${CHAOS_PAYEES[*]}")" \
        --out "$CHAOS_WORK/acked.tsv" --stats "$CHAOS_WORK/driver.json" --progress 5 \
        --timeout "$((CHAOS_LOAD_S * 3 + 120))" "$@"
    CHAOS_DRIVE_PID=$FALCON_BG_PID
    CHAOS_DRIVE_T0=$SECONDS
    chaos_log "load started: $CHAOS_PAYMENTS payments at ${CHAOS_RATE}/s (about ${CHAOS_LOAD_S}s)"
}

# chaos_driving: true while the driver publishes.
chaos_driving() { falcon__pid_alive "$CHAOS_DRIVE_PID"; }

# chaos_in_load: true while the driver publishes or the load's time
# (CHAOS_LOAD_S from its start) has not passed: the window for the chaos.
chaos_in_load() { chaos_driving || ((SECONDS < CHAOS_DRIVE_T0 + CHAOS_LOAD_S)); }

# chaos_acked: payments acknowledged so far.
chaos_acked() { wc -l <"$CHAOS_WORK/acked.tsv" | tr -d ' '; }

# chaos_drive_wait: wait for the load to end; its summary line goes to stderr.
chaos_drive_wait() {
    local rc=0
    wait "$CHAOS_DRIVE_PID" || rc=$?
    FALCON_LIVE_PIDS=${FALCON_LIVE_PIDS/ $CHAOS_DRIVE_PID / }
    grep -v '^drive: [0-9]*/[0-9]* acked' "$CHAOS_WORK/drive.log" | sed 's/^/  /' >&2 || true
    ((rc == 0)) || CHAOS_PROBLEMS+=("the load driver exited $rc")
    chaos_log "load done after $((SECONDS - CHAOS_DRIVE_T0))s: $(chaos_acked) payments acked"
}

# ---------------------------------------------------------------------------
# the end
# ---------------------------------------------------------------------------

# chaos_finish: wait until the driven payments settle, verify, print the
# verdict, exit 0 (PASS) or 1 (FAIL).
chaos_finish() {
    local rc=0 elapsed settle_rc=0 id n=0
    chaos_log "waiting (up to ${CHAOS_SETTLE_S}s) for every driven payment to be terminal and the outboxes empty"
    python3 "$CHAOS_DRIVE" settle --falcon "$FALCON_BIN" --acked "$CHAOS_WORK/acked.tsv" \
        --deadline "$CHAOS_SETTLE_S" --pids-file "$CHAOS_WORK/pids" --stale-out "$CHAOS_WORK/stale.json" ||
        settle_rc=$?
    chaos_runs_alive || true
    # The script's own last look, while everything still runs.
    if declare -F chaos_before_stop >/dev/null; then chaos_before_stop; fi
    # Stop every falcon run the way an operator does; each must go within 20 s.
    for id in "${!CHAOS_RUN_PID[@]}"; do chaos_run_stop "$id" 20; done
    case $settle_rc in
    0) ;;
    2) CHAOS_PROBLEMS+=("a falcon run exited by itself while settling") ;;
    *) CHAOS_PROBLEMS+=("not settled within ${CHAOS_SETTLE_S}s") ;;
    esac
    "$FALCON_BIN" verify >"$CHAOS_WORK/verify.txt" 2>&1 || true
    if ((settle_rc != 0)); then
        "$FALCON_BIN" --json saga stuck --older-than 5s >"$CHAOS_WORK/stuck.json" 2>&1 || true
    fi
    elapsed=$((SECONDS - CHAOS_T0))
    local -a problem_args=()
    for id in ${CHAOS_PROBLEMS[@]+"${CHAOS_PROBLEMS[@]}"}; do problem_args+=(--problem "$id"); done
    local verdict
    local -a provider_args=()
    [[ -z ${FALCON__PROVIDER__URL:-} ]] ||
        provider_args=(--provider-url "$FALCON__PROVIDER__URL" --provider-key-file "$FALCON__PROVIDER__API_KEY_FILE")
    verdict=$(python3 "$CHAOS_DRIVE" report --falcon "$FALCON_BIN" --name "$CHAOS_NAME" \
        --acked "$CHAOS_WORK/acked.tsv" --before "$CHAOS_WORK/before.json" \
        ${provider_args[@]+"${provider_args[@]}"} \
        --driver-stats "$CHAOS_WORK/driver.json" --json-out "$CHAOS_WORK/report.json" \
        --kills "$CHAOS_KILLS" --elapsed "$elapsed" \
        ${problem_args[@]+"${problem_args[@]}"} \
        -- mode="$CHAOS_MODE" ${CHAOS_EXTRA[@]+"${CHAOS_EXTRA[@]}"}) || rc=$?
    CHAOS_VERDICT_DONE=1
    if [[ $verdict != VERDICT* ]]; then
        verdict="VERDICT $CHAOS_NAME: FAIL the report failed (exit $rc) elapsed=${elapsed}s"
        rc=1
    fi
    printf '%s\n' "$verdict"
    if ((rc == 0)); then
        CHAOS_PASSED=1
        return 0
    fi
    # Evidence: the first payments not terminal (or not terminal in saga
    # list only): their timelines and what the falcon run logs say of them;
    # the count of errors and warnings per log.
    python3 -c 'import json,sys; d = json.load(open(sys.argv[1])); print("\n".join((d.get("lost", []) + list(d.get("view_stale", {})))[:3]))' \
        "$CHAOS_WORK/report.json" 2>/dev/null | while read -r id; do
        [[ -n $id ]] || continue
        {
            "$FALCON_BIN" saga show "$id" 2>&1 || true
            echo "--- saga list:"
            "$FALCON_BIN" --json saga list --limit 100000000 2>/dev/null |
                python3 -c 'import json,sys; print(json.dumps([r for r in json.load(sys.stdin) if r.get("saga_id") == sys.argv[1]]))' "$id" || true
            echo "--- falcon run logs:"
            grep -h -- "$id" "$CHAOS_WORK"/run-*.log || true
        } >"$CHAOS_WORK/saga-$id.txt"
        chaos_log "evidence for $id: $CHAOS_WORK/saga-$id.txt"
    done
    for f in "$CHAOS_WORK"/run-*.log; do
        n=$(grep -c -E ' (ERROR|WARN) ' "$f" || true)
        chaos_log "$(basename "$f"): $n ERROR/WARN lines"
    done
    exit 1
}
