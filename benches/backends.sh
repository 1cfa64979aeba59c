#!/usr/bin/env bash
# One scenario once per storage backend, back to back, and one line per
# backend with the figures docs/performance.md quotes:
#
#   benches/backends.sh scenarios/storage-ceiling.toml [OUT_DIR]
#   benches/backends.sh scenarios/half-capacity.toml [OUT_DIR]
#
# Backends: memory, embedded (a fresh directory), and Redis and PostgreSQL when
# CHATSCALE_REDIS_URL / CHATSCALE_POSTGRES_URL are set (each run in its own key
# prefix / schema, so the shared services stay clean). Reports go to
# OUT_DIR/<backend> (default reports/runs/<scenario>-<time>). For each run the
# line gives, per phase, the acked messages per second and the ack p99, and
# the run's delivery p99 and generator lag p99 (a lag above 50 ms means the
# generator, not the server, set the pace: the figures are then the machine's).
set -euo pipefail
cd "$(dirname "$0")/.."
scenario="${1:?usage: benches/backends.sh SCENARIO.toml [OUT_DIR]}"
name="$(basename "$scenario" .toml)"
out="${2:-reports/runs/$name-$(date -u +%Y%m%d-%H%M%S)}"
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 2; }
cargo build --release -q -p loadgen
tag="perf$$"
backends=("memory" "embedded:$(mktemp -d)/data")
[ -n "${CHATSCALE_REDIS_URL:-}" ] && backends+=("${CHATSCALE_REDIS_URL}?prefix=$tag")
[ -n "${CHATSCALE_POSTGRES_URL:-}" ] && backends+=("${CHATSCALE_POSTGRES_URL}?schema=$tag")
for storage in "${backends[@]}"; do
    kind="${storage%%:*}"
    status=0
    ./target/release/loadgen run "$scenario" --storage "$storage" --out "$out/$kind" \
        >"$out-$kind.log" 2>&1 || status=$?
    report="$out/$kind/report.json"
    if [ ! -f "$report" ]; then
        echo "$kind: no report (loadgen exit $status; see $out-$kind.log)"
        continue
    fi
    jq -r --arg kind "$kind" --arg status "$status" '
      def r: . * 10 | round / 10;
      "\($kind) (exit \($status)): " +
      ([.phases[] | "\(.name) \(.acked / .duration_s | round)/s ack p99 \(.ack_p99_ms | r) ms"] | join(", ")) +
      "; delivery p99 \(.metrics.delivery_latency.p99_ms | r) ms (whole run); generator lag p99 \(.generator.lag_p99_ms | r) ms" +
      (if .generator.limited then " (generator-limited)" else "" end)
    ' "$report"
done
echo "reports: $out/"
