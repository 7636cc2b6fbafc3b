#!/usr/bin/env bash
# Runs chaos scenarios in --short mode, one after the other, for the test
# suite (scripts/test.sh runs it after the cargo tests):
#
#   scripts/chaos/run-short.sh            # 1-kill-actors, 2-kill-process, 3-restart-nats,
#                                         # and with PostgreSQL reachable 2pg and 5pg
#   scripts/chaos/run-short.sh 1 3 5pg    # only those
#
# A scenario is its number (SQLite, one partition), or its number and `pg`:
# on fresh PostgreSQL databases with 4 partitions (`2pg`: one process
# killed -9 and restarted; `5pg`: three processes sharing the loops, one
# killed -9). The pg ones are in the default list when PostgreSQL answers
# (scripts/lib.sh falcon_ensure_postgres) and FALCON_CHAOS_PG is not 0.
#
# Prints each scenario's VERDICT line, then `chaos: N passed, M failed`.
# Exit 0 when every one passed. Each takes about 15-40 s; a scenario that
# runs longer than FALCON_CHAOS_TIMEOUT_S (default 150) is stopped and
# counts as failed. Builds falcon once (or uses FALCON_BIN).

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$FALCON_ROOT" || exit 1

falcon_build >&2
export FALCON_BIN
FALCON_NATS_SERVER=$(falcon_ensure_nats_server)
export FALCON_NATS_SERVER

wanted=("$@")
if ((${#wanted[@]} == 0)); then
    wanted=(1 2 3)
    [[ ${FALCON_CHAOS_PG:-1} == 0 ]] || ! falcon_ensure_postgres || wanted+=(2pg 5pg)
fi
passed=0 failed=0
for item in "${wanted[@]}"; do
    n=${item%pg}
    args=(--short)
    if [[ $item == *pg ]]; then
        args+=(--db postgres --partitions 4)
        [[ $n == 5 ]] && args+=(--processes 3)
    fi
    script=$(compgen -G "scripts/chaos/$n-*.sh" | head -n 1 || true)
    [[ -n $script ]] || falcon_die "no chaos scenario $item"
    name=$(basename "$script" .sh)
    [[ $item == *pg ]] && name+="-pg"
    log=$(mktemp "${TMPDIR:-/tmp}/falcon-chaos-$name.XXXXXX.log")
    started=$SECONDS
    rc=0
    timeout_cmd=()
    command -v timeout >/dev/null 2>&1 &&
        timeout_cmd=(timeout --signal=TERM --kill-after=30s "${FALCON_CHAOS_TIMEOUT_S:-150}")
    ${timeout_cmd[@]+"${timeout_cmd[@]}"} bash "$script" "${args[@]}" >"$log" 2>&1 || rc=$?
    verdict=$(grep '^VERDICT ' "$log" | tail -n 1 || true)
    if ((rc == 0)) && [[ $verdict == *": PASS "* ]]; then
        passed=$((passed + 1))
        echo "${verdict}"
        rm -f "$log"
    else
        failed=$((failed + 1))
        ((rc == 124)) && verdict="VERDICT $name: FAIL timed out after ${FALCON_CHAOS_TIMEOUT_S:-150}s"
        echo "${verdict:-VERDICT $name: FAIL no verdict (exit $rc)}"
        echo "--- $name (exit $rc, $((SECONDS - started))s); its output, also in $log:" >&2
        grep -E 'problem:|chaos .*:|error|VERDICT' "$log" | tail -n 40 >&2 || true
    fi
done
echo "chaos: $passed passed, $failed failed"
((failed == 0))
