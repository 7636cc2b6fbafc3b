#!/usr/bin/env bash
# Chaos 3: restart nats-server mid-load.
#
#   scripts/chaos/3-restart-nats.sh [--short] [--payments N] [--rate R] [--keep]
#
# One nats-server with deploy/nats/durable.conf (JetStream `sync_interval:
# always`: every acknowledged message is on disk), one `falcon run`,
# payments from drive.py. While the load runs, the server is stopped
# (SIGTERM, a clean shutdown), left down for a moment, and started again on
# the same port with the same store: 2 times in --short mode, 4 in full
# mode. `falcon run` and the driver must reconnect by themselves; the
# actors' consumers, relays and sweepers must resume. Then every driven
# payment must end completed or failed, exactly once, with the money
# conserved.
#
# Ends with one line: VERDICT 3-restart-nats: PASS|FAIL ...; exit 0 on PASS.
# See common.sh for the options; FALCON_CHAOS_NATS_DOWN_S (default 2) is how
# long the server stays down each time.

# shellcheck source=scripts/chaos/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
chaos_init 3-restart-nats "$@"

conf=$(chaos_secure_conf "$FALCON_ROOT/deploy/nats/durable.conf")
grep -Eq '^[[:space:]]*sync_interval:[[:space:]]*always' "$conf" ||
    chaos_fail "$conf does not set jetstream { sync_interval: always }"
port=$(falcon_free_port)
chaos_nats_start nats "$port" "$CHAOS_WORK/nats" -c "$conf"
url="nats://127.0.0.1:$port"
export FALCON__NATS__URL=$url
chaos_streams_apply
chaos_run_start main
chaos_wallets

down_s=${FALCON_CHAOS_NATS_DOWN_S:-2}
restarts_planned=$((CHAOS_SHORT ? 2 : 4))
chaos_drive_start "$url"
for ((k = 1; k <= restarts_planned; k++)); do
    at=$((CHAOS_DRIVE_T0 + (2 * k - 1) * CHAOS_LOAD_S / (2 * restarts_planned)))
    while ((SECONDS < at)) && chaos_in_load; do sleep 0.1; done
    chaos_in_load || break
    chaos_log "restart $k: stopping nats-server with $(chaos_acked) payments acked"
    chaos_nats_stop nats
    sleep "$down_s"   # the outage itself, not a synchronisation
    chaos_nats_start nats "$port" "$CHAOS_WORK/nats" -c "$conf"
    CHAOS_KILLS=$((CHAOS_KILLS + 1))
    chaos_runs_alive || break
done
chaos_drive_wait
((CHAOS_KILLS == restarts_planned)) ||
    chaos_log "the load ended after $CHAOS_KILLS of $restarts_planned restarts (use a lower --rate for more)"
((CHAOS_KILLS > 0)) || CHAOS_PROBLEMS+=("nats-server was never restarted")
chaos_before_stop() {
    local connects
    connects=$(cat "$CHAOS_WORK"/run-main.*.log | grep -c 'event: connected' || true)
    CHAOS_EXTRA+=("restarts=$CHAOS_KILLS" "falcon_reconnects=$((connects - 1))")
}
chaos_finish
