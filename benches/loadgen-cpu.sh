#!/usr/bin/env bash
# loadgen CPU per chat message: runs a fixed scenario (default
# scenarios/cpu-per-message.toml: 2,000 users, 4 friends, 5 s heartbeats,
# 5,000 one-to-one messages/s for 30 s) RUNS times (default 3) and prints the
# generator's CPU time per message in the steady phase, each run and the median.
#
#   benches/loadgen-cpu.sh [SCENARIO.toml] [extra loadgen run flags...]
#   LOADGEN=/path/to/loadgen RUNS=5 benches/loadgen-cpu.sh
#
# CPU is read from /proc/PID/stat (user + system) of the loadgen process alone
# (the embedded server is its child, a separate process) once a second; the
# window is the last phase, without its first 5 s (connections settle, the
# first heartbeats) and its last second. One message is one send, its ack and
# one delivery when the scenario sends one-to-one to one-device users; the
# divisor is the messages the open-model schedule issues in the window (rate x
# window; the report's acked count confirms the generator kept up).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "this script reads report.json with jq: apt-get install jq" >&2; exit 2; }
scenario="${1:-scenarios/cpu-per-message.toml}"
shift || true
extra=("$@")
runs="${RUNS:-3}"
loadgen="${LOADGEN:-}"
if [ -z "$loadgen" ]; then
  cargo build --release -q -p loadgen
  loadgen=./target/release/loadgen
fi
hz=$(getconf CLK_TCK)
mkdir -p reports/runs
results=()
for i in $(seq 1 "$runs"); do
  out="reports/runs/cpu-$(date -u +%Y%m%d-%H%M%S)-$i"
  samples="$(mktemp)"
  RUST_LOG=warn "$loadgen" run "$scenario" --out "$out" "${extra[@]}" >/dev/null 2>"$out.stderr" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    # unix ms, then utime + stime in ticks (fields 14 and 15 of /proc/PID/stat).
    if stat=$(cat "/proc/$pid/stat" 2>/dev/null); then
      read -r -a f <<<"${stat##*) }"
      echo "$(date +%s%3N) $(( f[11] + f[12] ))" >>"$samples"
    fi
    sleep 1
  done
  wait "$pid" || echo "run $i: loadgen exited $? (see $out.stderr)" >&2
  report="$out/report.json"
  [ -f "$report" ] || { echo "run $i: no report"; rm -f "$samples"; continue; }
  read -r from to rate sent acked < <(jq -r '
    (.run.started_at_ms) as $t0 | (.phases | last) as $p |
    "\($t0 + $p.start_ms + 5000) \($t0 + $p.start_ms + ($p.duration_s * 1000 | floor) - 1000) \($p.message_rate) \(.metrics.messages_sent) \(.metrics.messages_acked)"' "$report")
  us=$(awk -v from="$from" -v to="$to" -v rate="$rate" -v hz="$hz" '
    $1 >= from && !a { a = 1; t0 = $1; c0 = $2 }
    $1 <= to { t1 = $1; c1 = $2 }
    END { if (!a || t1 <= t0) { print "n/a"; exit }
          printf "%.1f", (c1 - c0) / hz / (rate * (t1 - t0) / 1000) * 1e6 }' "$samples")
  rm -f "$samples"
  echo "run $i: ${us} us CPU per message (steady phase at ${rate}/s; ${sent} sent, ${acked} acked; $out)"
  results+=("$us")
done
printf '%s\n' "${results[@]}" | grep -v n/a | sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "median: %s us CPU per message over %d runs\n", v[int((NR + 1) / 2)], NR }'
