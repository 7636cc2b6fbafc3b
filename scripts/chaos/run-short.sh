#!/usr/bin/env bash
# Runs chaos scenarios 1-3 in --short mode, one after the other, for the
# test suite (scripts/test.sh runs it after the cargo tests):
#
#   scripts/chaos/run-short.sh            # 1-kill-actors, 2-kill-process, 3-restart-nats
#   scripts/chaos/run-short.sh 1 3        # only those
#
# Prints each scenario's VERDICT line, then `chaos: N passed, M failed`.
# Exit 0 when every one passed. Each takes about 15-40 s; a scenario that
# runs longer than FALCON_CHAOS_TIMEOUT_S (default 150) is stopped and
# counts as failed. Builds falcon once (or uses FALCON_BIN).

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$FALCON_ROOT" || exit 1

falcon_build >&2
export FALCON_BIN
FALCON_NATS_SERVER=$(falcon_ensure_nats_server)
export FALCON_NATS_SERVER

wanted=("$@")
((${#wanted[@]})) || wanted=(1 2 3)
passed=0 failed=0
for n in "${wanted[@]}"; do
    script=$(compgen -G "scripts/chaos/$n-*.sh" | head -n 1 || true)
    [[ -n $script ]] || falcon_die "no chaos scenario $n"
    name=$(basename "$script" .sh)
    log=$(mktemp "${TMPDIR:-/tmp}/falcon-chaos-$name.XXXXXX.log")
    started=$SECONDS
    rc=0
    timeout_cmd=()
    command -v timeout >/dev/null 2>&1 &&
        timeout_cmd=(timeout --signal=TERM --kill-after=30s "${FALCON_CHAOS_TIMEOUT_S:-150}")
    ${timeout_cmd[@]+"${timeout_cmd[@]}"} bash "$script" --short >"$log" 2>&1 || rc=$?
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
