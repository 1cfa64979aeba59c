#!/usr/bin/env bash
# loadgen footprint: holds 10,000 connected devices against one embedded server
# (scenarios/capacity-10k.toml) and prints what one simulated device costs the
# generator: resident memory per connected device and CPU time per delivered
# message, with the server's memory per connection beside them.
#
#   benches/loadgen-footprint.sh [SCENARIO.toml] [extra loadgen run flags...]
#   LOADGEN=/path/to/loadgen benches/loadgen-footprint.sh   # another build
#
# Memory per device is the least-squares slope of loadgen's resident memory
# against connected devices over the per-second samples: over the whole run
# (the report's generator.memory_per_connection) and over the ramp only, and
# peak RSS / peak devices as an upper bound (it includes the fixed cost of the
# process and histograms).
# CPU per delivered message is the generator's CPU seconds over the phases
# (heartbeats, connects and all) divided by deliveries.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "this script reads report.json with jq: apt-get install jq" >&2; exit 2; }
scenario="${1:-scenarios/capacity-10k.toml}"
shift || true
out="reports/runs/footprint-$(date -u +%Y%m%d-%H%M%S)"
loadgen="${LOADGEN:-}"
if [ -z "$loadgen" ]; then
  cargo build --release -q -p loadgen
  loadgen=./target/release/loadgen
fi
status=0
"$loadgen" run "$scenario" --out "$out" "$@" || status=$?
report="$out/report.json"
[ -f "$report" ] || { echo "no report (loadgen exit $status)"; exit "$status"; }
jq -r '
  def kib: . / 1024 | . * 100 | round / 100;
  "scenario:                         \(.scenario) (loadgen exit '"$status"')",
  "peak connected devices:           \(.metrics.peak_connections)",
  "loadgen memory per device:        \(.generator.memory_per_connection // "n/a" | if type == "number" then (kib | tostring) + " KiB (slope)" else . end)",
  "loadgen peak RSS / peak devices:  \((.generator.peak_rss_bytes / ([.metrics.peak_connections, 1] | max)) | kib) KiB (upper bound)",
  "loadgen CPU seconds:              \(.generator.cpu_seconds * 100 | round / 100)",
  "deliveries:                       \(.metrics.deliveries)",
  "CPU per delivered message:        \(if .metrics.deliveries > 0 then (.generator.cpu_seconds / .metrics.deliveries * 1e6 | round | tostring) + " us" else "n/a" end)",
  "server memory per connection:     \(.metrics.server_memory_per_connection // "n/a" | if type == "number" then (kib | tostring) + " KiB" else . end)",
  "send delay p50 / p99:             \(.generator.send_delay_p50_ms // "n/a") / \(.generator.send_delay_p99_ms // "n/a") ms (limited: \(.generator.limited))",
  "timer lag p99:                    \(.generator.lag_p99_ms) ms",
  "device state p50 / max:           \(.generator.device_memory_p50_bytes // "n/a") / \(.generator.device_memory_max_bytes // "n/a") bytes",
  "delivery p50 / p99:               \(.metrics.delivery_latency.p50_ms) / \(.metrics.delivery_latency.p99_ms) ms",
  "report:                           '"$out"'"
' "$report"
# The same slope over the ramp's samples only (0 < devices < peak): what one more
# connected device costs, without what traffic adds while the count holds still.
jq -r '.metrics.peak_connections as $p | .memory[] | select(.connections > 0 and .connections < $p)
       | "\(.connections) \(.loadgen_rss_bytes) \(.server_rss_bytes // 0)"' "$report" |
  awk '{ n++; x+=$1; y+=$2; z+=$3; xx+=$1*$1; xy+=$1*$2; xz+=$1*$3 }
       END { if (n < 3) { print "ramp-only slopes:                 n/a (fewer than 3 ramp samples)"; exit }
             d = n*xx - x*x
             printf "loadgen memory per device, ramp:  %.2f KiB (slope over %d samples)\n", (n*xy - x*y)/d/1024, n
             printf "server memory per conn, ramp:     %.2f KiB\n", (n*xz - x*z)/d/1024 }'
exit "$status"
