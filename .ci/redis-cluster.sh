#!/usr/bin/env bash
# A 3-master Redis Cluster on loopback, for the storage conformance suite's
# `redis_cluster` backend (and for trying the Redis backend against a cluster by hand).
#
#   bash .ci/redis-cluster.sh start [FIRST_PORT] [DIR]   # prints the cluster URL
#   bash .ci/redis-cluster.sh stop  [FIRST_PORT] [DIR]
#
# Ports FIRST_PORT, +1, +2 (default 6391-6393), data in DIR (default
# /tmp/chatscale-services/redis-cluster). `start` is idempotent: a cluster that
# already answers with state ok is reused. Each node has the append-only file on
# with `appendfsync always`, like the single Redis of `.ci/services.sh`.
#
# The URL it prints is what `--storage` takes for a cluster: fred's clustered form,
# `redis-cluster://HOST:PORT?node=HOST:PORT&node=HOST:PORT`.
set -euo pipefail

cmd="${1:-start}"
first="${2:-6391}"
dir="${3:-/tmp/chatscale-services/redis-cluster}"
ports=("$first" "$((first + 1))" "$((first + 2))")

log() { echo "redis-cluster: $*" >&2; }

url() {
    echo "redis-cluster://127.0.0.1:${ports[0]}?node=127.0.0.1:${ports[1]}&node=127.0.0.1:${ports[2]}"
}

cluster_ok() {
    redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'
}

start() {
    if cluster_ok; then
        log "already running on ${ports[*]}"
        url
        return 0
    fi
    local p
    for p in "${ports[@]}"; do
        mkdir -p "$dir/$p"
        if ! redis-cli -h 127.0.0.1 -p "$p" ping >/dev/null 2>&1; then
            # A node left over from a half-made cluster keeps its nodes.conf; start clean.
            # (-r: Redis 7 keeps its append-only files in a directory.)
            rm -rf "$dir/$p/nodes.conf" "$dir/$p"/appendonly* "$dir/$p/dump.rdb"
            redis-server --bind 127.0.0.1 --port "$p" --dir "$dir/$p" \
                --cluster-enabled yes --cluster-config-file nodes.conf \
                --cluster-node-timeout 5000 \
                --appendonly yes --appendfsync always --save "" \
                --daemonize yes --pidfile "$dir/$p/redis.pid" --logfile "$dir/$p/redis.log"
        fi
    done
    local i
    for p in "${ports[@]}"; do
        for i in $(seq 1 100); do
            redis-cli -h 127.0.0.1 -p "$p" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
    # Nodes that already know each other (a restart) form the cluster again by
    # themselves; fresh ones are joined here.
    if ! redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info | grep -q 'cluster_known_nodes:3'; then
        redis-cli --cluster create "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" \
            "127.0.0.1:${ports[2]}" --cluster-replicas 0 --cluster-yes >/dev/null
    fi
    for i in $(seq 1 100); do
        if cluster_ok; then
            log "3 masters on ${ports[*]}"
            url
            return 0
        fi
        sleep 0.1
    done
    log "the cluster did not reach state ok"
    return 1
}

stop() {
    local p
    for p in "${ports[@]}"; do
        redis-cli -h 127.0.0.1 -p "$p" shutdown nosave >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    url) url ;;
    *) echo "usage: $0 start|stop|url [FIRST_PORT] [DIR]" >&2; exit 2 ;;
esac
