#!/usr/bin/env bash
# Chaos 4: a three-node JetStream cluster loses a node under load, then gets
# it back.
#
#   scripts/chaos/4-cluster.sh [--short] [--payments N] [--rate R] [--keep]
#
# Three nats-servers on loopback (deploy/nats/cluster-{1,2,3}.conf, on free
# ports: client ports and route ports given with -p, --cluster, --routes),
# streams with three replicas (FALCON__STREAMS__REPLICAS=3), one
# `falcon run`, payments from drive.py, which knows all three servers. While
# the load runs, one node at a time is stopped (SIGTERM), left down for
# FALCON_CHAOS_NODE_DOWN_S seconds (default 5) and started again with its
# store: once in --short mode (node 1, the one falcon connected to), three
# times in full mode (nodes 2, 1, 3). A majority stays up, so no
# acknowledged message may be lost; stream and consumer leaders move,
# `falcon run` fails over to another node. Then every driven payment must
# end completed or failed, exactly once, with the money conserved.
#
# FALCON__NATS__URL gets all three servers, comma-separated, when falcon
# accepts that; otherwise node 1 alone (the client learns the other nodes
# from the cluster's INFO and reconnects to them), reported as
# multi_url=unsupported in the verdict line.
#
# Ends with one line: VERDICT 4-cluster: PASS|FAIL ...; exit 0 on PASS.

# shellcheck source=scripts/chaos/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
chaos_init 4-cluster "$@"

declare -a cport rport
for i in 1 2 3; do
    cport[i]=$(falcon_free_port)
    rport[i]=$(falcon_free_port)
done
routes="nats://127.0.0.1:${rport[1]},nats://127.0.0.1:${rport[2]},nats://127.0.0.1:${rport[3]}"
urls="nats://127.0.0.1:${cport[1]},nats://127.0.0.1:${cport[2]},nats://127.0.0.1:${cport[3]}"
node_start() {
    local i=$1
    chaos_nats_start "nats-$i" "${cport[i]}" "$CHAOS_WORK/nats-$i" \
        -c "$(chaos_secure_conf "$FALCON_ROOT/deploy/nats/cluster-$i.conf")" \
        --cluster "nats://127.0.0.1:${rport[i]}" --routes "$routes"
}
for i in 1 2 3; do node_start "$i"; done

export FALCON__STREAMS__REPLICAS=3
export FALCON__NATS__URL=$urls
multi_url=ok
if out=$("$FALCON_BIN" streams apply 2>&1 >/dev/null) || [[ $out != *parse* && $out != *invalid* ]]; then
    chaos_streams_apply
else
    multi_url=unsupported
    chaos_log "falcon does not accept a list of servers in FALCON__NATS__URL ($out); using node 1 only"
    export FALCON__NATS__URL="nats://127.0.0.1:${cport[1]}"
    chaos_streams_apply
fi

# Every stream must have three replicas, all current.
stream_replicas() {
    local s doc
    for s in FALCON_CMD FALCON_EVT FALCON_DLQ; do
        # shellcheck disable=SC2016 # a literal $: the JetStream API subject
        doc=$(python3 "$FALCON_ROOT/scripts/nats_pub.py" --url "nats://127.0.0.1:${cport[$1]}" \
            --user chaos --password-file "$CHAOS_WORK/keys/chaos.password" '$JS.API.STREAM.INFO.'"$s" '') || return 1
        python3 -c 'import json,sys
d = json.loads(sys.argv[1]); c = d.get("cluster", {})
print("%s:R%s:%s+%d" % (d["config"]["name"], d["config"].get("num_replicas"), c.get("leader", "-"), len(c.get("replicas") or [])))' "$doc" || return 1
    done
}
replicas=$(stream_replicas 1 | tr '\n' ' ')
chaos_log "streams: $replicas"
[[ $replicas == *FALCON_CMD:R3* && $replicas == *FALCON_EVT:R3* ]] ||
    chaos_fail "the streams are not R3 ($replicas)"

chaos_run_start main
chaos_wallets

down_s=${FALCON_CHAOS_NODE_DOWN_S:-5}
if ((CHAOS_SHORT)); then order=(1); else order=(2 1 3); fi
chaos_drive_start "$urls"
for ((k = 1; k <= ${#order[@]}; k++)); do
    i=${order[k - 1]}
    at=$((CHAOS_DRIVE_T0 + (2 * k - 1) * CHAOS_LOAD_S / (2 * ${#order[@]}) - down_s / 2))
    while ((SECONDS < at)) && chaos_in_load; do sleep 0.1; done
    chaos_in_load || break
    chaos_log "stopping node $i with $(chaos_acked) payments acked"
    chaos_nats_stop "nats-$i"
    CHAOS_KILLS=$((CHAOS_KILLS + 1))
    sleep "$down_s"   # the outage itself, not a synchronisation
    node_start "$i"
    chaos_runs_alive || break
done
chaos_drive_wait
((CHAOS_KILLS > 0)) || CHAOS_PROBLEMS+=("no node was stopped")

# The CLI from here on: a server that is up (all are, by now).
if [[ $multi_url == ok ]]; then
    export FALCON__NATS__URL=$urls
else
    export FALCON__NATS__URL="nats://127.0.0.1:${cport[2]}"
fi
chaos_before_stop() {
    local connects
    connects=$(cat "$CHAOS_WORK"/run-main.*.log | grep -c 'event: connected' || true)
    CHAOS_EXTRA+=("nodes_stopped=$CHAOS_KILLS" "multi_url=$multi_url" "falcon_reconnects=$((connects - 1))")
    chaos_log "streams after the chaos: $(stream_replicas 2 | tr '\n' ' ')"
}
chaos_finish
