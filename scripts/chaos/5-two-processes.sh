#!/usr/bin/env bash
# Chaos 5: several `falcon run` processes consume at once; they are killed -9.
#
#   scripts/chaos/5-two-processes.sh [--short] [--payments N] [--rate R] [--keep]
#                                    [--db sqlite|postgres] [--partitions N] [--processes N]
#
# One nats-server; N `falcon run` processes (default 2; FALCON__NODE=a, b,
# c, ...) on the same databases and streams. Each consumer loop (one per
# partition) has one owner at a time: the processes spread the loops
# between them (docs/DESIGN.md, "One owner per partition"). While drive.py
# publishes payments: --short kills a with SIGKILL at a third of the load
# and starts it again at two thirds; full mode does the same, then kills b
# at four fifths of the load and does not start it again. A dead process's
# loops pass to the survivors once its pins lapse (consumer.owner_timeout_ms)
# and its membership beats stop; the messages it had pulled come back after
# the 2 s ack wait, and the outbox rows it committed but never published are
# published by a survivor's relay sweep. Then every driven payment must end
# completed or failed, exactly once, with the money conserved (the guarded
# updates and primary-key claims keep a step from applying twice even when
# an old owner's last batch overlaps the new owner's first).
#
# Ends with one line: VERDICT 5-two-processes: PASS|FAIL ...; exit 0 on PASS.
# See common.sh for the options.

# shellcheck source=scripts/chaos/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
chaos_init 5-two-processes "$@"

falcon_start_nats "$CHAOS_WORK/nats" "$(chaos_secure_conf "$FALCON_ROOT/deploy/nats/single.conf")"
export FALCON__NATS__URL=$NATS_URL
chaos_streams_apply
names=(a b c d e f g h i)
names=("${names[@]:0:CHAOS_PROCESSES}")
for n in "${names[@]}"; do
    chaos_run_start "$n" "FALCON__NODE=$n"
done
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
CHAOS_EXTRA+=("processes=$CHAOS_PROCESSES" "alive_at_end=$(printf '%s' "${!CHAOS_RUN_PID[@]}" | tr -d ' ')")
chaos_finish
