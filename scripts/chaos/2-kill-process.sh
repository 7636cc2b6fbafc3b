#!/usr/bin/env bash
# Chaos 2: kill -9 the whole `falcon run` process mid-load, restart it, repeat.
#
#   scripts/chaos/2-kill-process.sh [--short] [--payments N] [--rate R] [--keep]
#
# One nats-server, one `falcon run`; while drive.py publishes payments the
# process is killed with SIGKILL (no shutdown, transactions cut anywhere,
# outbox rows committed but not yet published) and started again at once:
# 2 times in --short mode, 6 in full mode, spread over the load. The
# restarted process must pick up the unacked messages (redelivered after
# the 2 s ack wait) and publish what the dead one left in the outboxes.
# Then every driven payment must end completed or failed, exactly once,
# with the money conserved.
#
# Ends with one line: VERDICT 2-kill-process: PASS|FAIL ...; exit 0 on PASS.
# See common.sh for the options.

# shellcheck source=scripts/chaos/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
chaos_init 2-kill-process "$@"

falcon_start_nats "$CHAOS_WORK/nats" "$(chaos_secure_conf "$FALCON_ROOT/deploy/nats/single.conf")"
export FALCON__NATS__URL=$NATS_URL
chaos_streams_apply
chaos_run_start main
chaos_wallets

kills_planned=$((CHAOS_SHORT ? 2 : 6))
chaos_drive_start "$NATS_URL"
# Kill k at (k - 0.5) / kills_planned of the load, each a little randomised.
for ((k = 1; k <= kills_planned; k++)); do
    at=$((CHAOS_DRIVE_T0 + (2 * k - 1) * CHAOS_LOAD_S / (2 * kills_planned) + RANDOM % 2))
    while ((SECONDS < at)) && chaos_in_load; do sleep 0.1; done
    chaos_in_load || break
    chaos_run_kill9 main
    chaos_run_start main
done
chaos_drive_wait
((CHAOS_KILLS == kills_planned)) ||
    chaos_log "the load ended after $CHAOS_KILLS of $kills_planned kills (use a lower --rate for more)"
((CHAOS_KILLS > 0)) || CHAOS_PROBLEMS+=("the process was never killed")
chaos_finish
