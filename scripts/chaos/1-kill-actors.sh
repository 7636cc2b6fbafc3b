#!/usr/bin/env bash
# Chaos 1: kill random actors every second under load.
#
#   scripts/chaos/1-kill-actors.sh [--short] [--payments N] [--rate R] [--keep]
#
# One nats-server, one `falcon run` (chaos.enabled), payments driven by
# drive.py; while the load runs, `falcon chaos kill any` once a second: an
# actor (payment, risk, wallet, a relay, the deadline sweeper) dies mid-batch
# and its supervisor restarts it; its unacked messages come back after the
# consumer's ack wait (2 s here). Then every driven payment must end
# completed or failed, exactly once, with the money conserved.
#
# Ends with one line: VERDICT 1-kill-actors: PASS|FAIL driven=... lost=...
# double_applied=... kills=...; exit 0 on PASS. See common.sh for options.

# shellcheck source=scripts/chaos/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
chaos_init 1-kill-actors "$@"

falcon_start_nats "$CHAOS_WORK/nats" "$(chaos_secure_conf "$FALCON_ROOT/deploy/nats/single.conf")"
export FALCON__NATS__URL=$NATS_URL
chaos_streams_apply
chaos_run_start main
chaos_wallets

chaos_drive_start "$NATS_URL"
declare -A killed=()
misses=0
next=$((SECONDS + 1))
while chaos_in_load; do
    if ((SECONDS >= next)); then
        next=$((SECONDS + 1))
        out=$("$FALCON_BIN" --json chaos kill any 2>&1) || { misses=$((misses + 1)); continue; }
        actor=$(python3 -c 'import json,sys; k=json.load(sys.stdin).get("killed"); print((k or "").rsplit("/",1)[-1])' <<<"$out" 2>/dev/null || true)
        if [[ -n $actor ]]; then
            CHAOS_KILLS=$((CHAOS_KILLS + 1))
            killed[$actor]=$((${killed[$actor]:-0} + 1))
        else
            misses=$((misses + 1))   # that actor was restarting already
        fi
    fi
    sleep 0.1
done
chaos_drive_wait
chaos_runs_alive || true
summary=$(for a in "${!killed[@]}"; do printf '%s:%s,' "$a" "${killed[$a]}"; done)
chaos_log "killed: ${summary%,} (kill requests without a victim: $misses)"
((CHAOS_KILLS > 0)) || CHAOS_PROBLEMS+=("no actor was killed")
CHAOS_EXTRA+=("victims=${summary%,}")
chaos_finish
