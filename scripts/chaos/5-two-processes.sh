#!/usr/bin/env bash
# Chaos 5: two `falcon run` processes consume at once; one is killed -9.
#
#   scripts/chaos/5-two-processes.sh [--short] [--payments N] [--rate R] [--keep]
#
# One nats-server; two `falcon run` processes (FALCON__NODE=a and b) on the
# same databases share every durable consumer, so the batches of one saga
# are spread over both. While drive.py publishes payments: --short kills a
# with SIGKILL at a third of the load and starts it again at two thirds;
# full mode does the same, then kills b at four fifths of the load and does
# not start it again (a finishes the work alone). The messages the dead
# process had pulled come back after the 2 s ack wait to the survivor, and
# the outbox rows it committed but never published are published by the
# survivor's relay sweep. Then every driven payment must end completed or
# failed, exactly once, with the money conserved (the guarded balance
# updates and primary-key claims keep two writers from applying a step twice).
#
# Ends with one line: VERDICT 5-two-processes: PASS|FAIL ...; exit 0 on PASS.

# shellcheck source=scripts/chaos/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
chaos_init 5-two-processes "$@"

falcon_start_nats "$CHAOS_WORK/nats" "$(chaos_secure_conf "$FALCON_ROOT/deploy/nats/single.conf")"
export FALCON__NATS__URL=$NATS_URL
chaos_streams_apply
chaos_run_start a FALCON__NODE=a
chaos_run_start b FALCON__NODE=b
chaos_wallets

# at FRACTION_PERCENT: wait until that much of the load's time has passed.
at() {
    local t=$((CHAOS_DRIVE_T0 + CHAOS_LOAD_S * $1 / 100))
    while ((SECONDS < t)) && chaos_in_load; do sleep 0.1; done
    chaos_in_load
}

chaos_drive_start "$NATS_URL"
if ((CHAOS_SHORT)); then
    at 33 && chaos_run_kill9 a
    at 66 && chaos_run_start a FALCON__NODE=a
else
    at 20 && chaos_run_kill9 a
    at 45 && chaos_run_start a FALCON__NODE=a
    at 80 && chaos_run_kill9 b
fi
chaos_drive_wait
# Whatever the timing, a must be running at the end (b may stay dead).
[[ -n ${CHAOS_RUN_PID[a]:-} ]] || chaos_run_start a FALCON__NODE=a
((CHAOS_KILLS > 0)) || CHAOS_PROBLEMS+=("no process was killed (the load ended too soon; lower --rate)")
CHAOS_EXTRA+=("processes=2" "alive_at_end=$(printf '%s' "${!CHAOS_RUN_PID[@]}" | tr -d ' ')")
chaos_finish
