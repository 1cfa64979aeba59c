# shellcheck shell=bash
# Starts the storage services the tests need, on loopback, and exports their URLs.
#
#   source .ci/services.sh        # from .ci/run, or by a developer before `cargo test`
#
# What it does (as root on a Debian 12 machine; idempotent, a second run reuses or
# restarts what the first one left):
#   - installs `redis-server` and `postgresql` from the OS packages when missing;
#   - starts Redis on 127.0.0.1:${CHATSCALE_REDIS_PORT:-6390} with the append-only
#     file on and `appendfsync always` (an acked message is fsynced, like embedded and
#     PostgreSQL's default `synchronous_commit=on`), data in a temp dir;
#   - starts PostgreSQL as its own cluster (initdb + pg_ctl, run as the `postgres`
#     user, since root cannot run postgres) on 127.0.0.1:${CHATSCALE_POSTGRES_PORT:-5440}
#     with trust auth on loopback only, database `chatscale`;
#   - starts a 3-master Redis Cluster on 127.0.0.1:${CHATSCALE_REDIS_CLUSTER_PORT:-6391}
#     and the next two ports (`.ci/redis-cluster.sh`: `redis-server --cluster-enabled yes`
#     x3, then `redis-cli --cluster create ... --cluster-replicas 0`), for the storage
#     conformance suite's `redis_cluster` backend;
#   - waits until all answer, exports CHATSCALE_REDIS_URL, CHATSCALE_REDIS_CLUSTER_URL,
#     CHATSCALE_POSTGRES_URL and CHATSCALE_REQUIRE_SERVICES=1 (the tests then fail, not
#     skip, when a service is missing), and registers `chatscale_services_stop` on EXIT
#     (keeping any EXIT trap the caller already had).
#
# It is sourced, so it does not change the caller's shell options; every step checks
# its own status and the script returns non-zero on failure.

chatscale_services_dir="${CHATSCALE_SERVICES_DIR:-/tmp/chatscale-services}"
chatscale_redis_port="${CHATSCALE_REDIS_PORT:-6390}"
chatscale_pg_port="${CHATSCALE_POSTGRES_PORT:-5440}"
chatscale_cluster_port="${CHATSCALE_REDIS_CLUSTER_PORT:-6391}"
chatscale_cluster_script="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/redis-cluster.sh"

chatscale_services_log() { echo "services: $*" >&2; }

chatscale_pg_bin() {
    # The newest installed server version (Debian 12 ships 15). No pipeline, so that
    # a caller running under `set -euo pipefail` (as .ci/run does) is not stopped
    # when PostgreSQL is not installed yet.
    local d bin=""
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ]; then bin="$d"; fi
    done
    [ -n "$bin" ] && echo "$bin"
}

chatscale_services_install() {
    local need=()
    command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
    chatscale_pg_bin >/dev/null || need+=(postgresql)
    command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
    [ "${#need[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        chatscale_services_log "missing ${need[*]} and not root: install them first"
        return 1
    fi
    chatscale_services_log "installing ${need[*]} from the OS packages"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null || return 1
    # The packages start their own default instances (6379, 5432); ours run beside
    # them on other ports, so those are left alone.
}

chatscale_redis_start() {
    local dir="$chatscale_services_dir/redis"
    if redis-cli -h 127.0.0.1 -p "$chatscale_redis_port" ping >/dev/null 2>&1; then
        chatscale_services_log "redis already answers on $chatscale_redis_port"
        return 0
    fi
    mkdir -p "$dir" || return 1
    # Start empty: data left by an earlier run (a killed session, a developer's runs)
    # is of no use to the tests and a large append-only file slows the start.
    rm -rf "$dir/appendonlydir" "$dir"/appendonly* "$dir/dump.rdb" || return 1
    # redis-server refuses to run as root only under systemd's unit; here it is fine,
    # but keep the files owned by whoever runs it.
    redis-server --bind 127.0.0.1 --port "$chatscale_redis_port" --dir "$dir" \
        --appendonly yes --appendfsync always --save "" \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
        --databases 16 || return 1
    local i
    for i in $(seq 1 100); do
        redis-cli -h 127.0.0.1 -p "$chatscale_redis_port" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    chatscale_services_log "redis did not answer; log:"; tail -n 20 "$dir/redis.log" >&2
    return 1
}

chatscale_as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

chatscale_pg_start() {
    local bin dir="$chatscale_services_dir/pg"
    bin="$(chatscale_pg_bin)" || { chatscale_services_log "no PostgreSQL server binaries"; return 1; }
    if "$bin/pg_isready" -q -h 127.0.0.1 -p "$chatscale_pg_port"; then
        chatscale_services_log "postgres already answers on $chatscale_pg_port"
    else
        mkdir -p "$chatscale_services_dir" || return 1
        if [ ! -f "$dir/PG_VERSION" ]; then
            rm -rf "$dir" && mkdir -p "$dir" && chown postgres:postgres "$dir" && chmod 700 "$dir" \
                || return 1
            chatscale_as_postgres "$bin/initdb" -D "$dir" -U postgres -A trust \
                --encoding UTF8 --locale C.UTF-8 >/dev/null || return 1
        fi
        # A stale pid file from a killed run would stop pg_ctl from starting.
        if [ -f "$dir/postmaster.pid" ] && ! chatscale_as_postgres "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
            rm -f "$dir/postmaster.pid"
        fi
        chatscale_as_postgres "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
            -o "-p $chatscale_pg_port -c listen_addresses=127.0.0.1 -k $dir -c max_connections=200" \
            start >/dev/null || { tail -n 20 "$dir/server.log" >&2; return 1; }
    fi
    local i
    for i in $(seq 1 100); do
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$chatscale_pg_port" && break
        sleep 0.1
    done
    if ! psql -h 127.0.0.1 -p "$chatscale_pg_port" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'chatscale'" | grep -q 1; then
        psql -h 127.0.0.1 -p "$chatscale_pg_port" -U postgres -d postgres -qc \
            "CREATE DATABASE chatscale" || return 1
    fi
}

chatscale_redis_cluster_start() {
    chatscale_redis_cluster_url="$(bash "$chatscale_cluster_script" start \
        "$chatscale_cluster_port" "$chatscale_services_dir/redis-cluster")" || return 1
}

chatscale_services_stop() {
    local bin
    bash "$chatscale_cluster_script" stop "$chatscale_cluster_port" \
        "$chatscale_services_dir/redis-cluster" >/dev/null 2>&1 || true
    if [ -f "$chatscale_services_dir/redis/redis.pid" ]; then
        redis-cli -h 127.0.0.1 -p "$chatscale_redis_port" shutdown nosave >/dev/null 2>&1 || true
        rm -f "$chatscale_services_dir/redis/redis.pid"
    fi
    bin="$(chatscale_pg_bin)" || bin=""
    if [ -n "$bin" ] && [ -f "$chatscale_services_dir/pg/postmaster.pid" ]; then
        chatscale_as_postgres "$bin/pg_ctl" -D "$chatscale_services_dir/pg" -m fast -w stop \
            >/dev/null 2>&1 || true
    fi
}

chatscale_services_start() {
    chatscale_services_install || return 1
    chatscale_redis_start || return 1
    chatscale_redis_cluster_start || return 1
    chatscale_pg_start || return 1
    export CHATSCALE_REDIS_URL="redis://127.0.0.1:$chatscale_redis_port"
    export CHATSCALE_REDIS_CLUSTER_URL="$chatscale_redis_cluster_url"
    export CHATSCALE_POSTGRES_URL="postgres://postgres@127.0.0.1:$chatscale_pg_port/chatscale"
    export CHATSCALE_REQUIRE_SERVICES=1
    # Stop both when the sourcing shell exits, after whatever EXIT trap it had.
    local previous
    previous="$(trap -p EXIT | sed -e "s/^trap -- '//" -e "s/' EXIT\$//")"
    case "$previous" in
        *chatscale_services_stop*) ;;
        "") trap chatscale_services_stop EXIT ;;
        *) trap "$previous; chatscale_services_stop" EXIT ;;
    esac
    chatscale_services_log "redis $CHATSCALE_REDIS_URL (appendonly yes, appendfsync always)," \
        "redis cluster $CHATSCALE_REDIS_CLUSTER_URL, postgres $CHATSCALE_POSTGRES_URL"
}

chatscale_services_start
