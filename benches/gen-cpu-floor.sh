#!/usr/bin/env bash
# loadgen's CPU per chat message beside the floor: a minimal tokio-tungstenite
# client (benches/src/bin/raw-client.rs) on the same workload (2,000 users, 4
# friends, one device each, 5 s heartbeats, 5,000 one-to-one sends/s, 30 s
# steady) against the same reference server, measured the same way (own CPU,
# user + system, over the steady phase without its first 5 s and last second,
# per message). Runs alternate, raw then loadgen, RUNS times (default 3), so a
# busy machine weighs on both alike; prints each run, the medians and the ratio.
#
#   benches/gen-cpu-floor.sh [extra loadgen run flags...]
#   LOADGEN=/path/to/loadgen RUNS=5 benches/gen-cpu-floor.sh
#   SCENARIO=my-copy.toml benches/gen-cpu-floor.sh   # loadgen on a variant (e.g. a
#                                                   # clock_resolution); the raw client's workload stays
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-3}"
scenario="${SCENARIO:-scenarios/cpu-per-message.toml}"
cargo build --release -q -p chatscale-benches --bin raw-client
loadgen="${LOADGEN:-}"
if [ -z "$loadgen" ]; then
  cargo build --release -q -p loadgen
  loadgen=./target/release/loadgen
fi
raw=() gen=()
for i in $(seq 1 "$runs"); do
  load=$(cut -d' ' -f1 /proc/loadavg)
  # A run that fails its check (a send not acked or not delivered once: the
  # server fell behind) prints its figure but is left out of the median.
  if out=$(./target/release/raw-client 2>/dev/null); then
    line=$(grep '^raw client:' <<<"$out" || true)
  else
    line="raw client: left out, not every send was acked and delivered: $(sed -n 's/^raw client: //p' <<<"$out")"
  fi
  r=$(sed -n 's/^raw client: \([0-9.]*\) us.*/\1/p' <<<"$line")
  echo "run $i (load average $load): ${line:-raw client: failed}"
  [ -n "$r" ] && raw+=("$r")
  load=$(cut -d' ' -f1 /proc/loadavg)
  line=$(LOADGEN="$loadgen" RUNS=1 benches/loadgen-cpu.sh "$scenario" "$@" | grep '^run 1:' || true)
  g=$(sed -n 's/^run 1: \([0-9.]*\) us.*/\1/p' <<<"$line")
  echo "run $i (load average $load): loadgen: ${line#run 1: }"
  [ -n "$g" ] && gen+=("$g")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
mr=$(median "${raw[@]}")
mg=$(median "${gen[@]}")
echo "median: raw client ${mr:-n/a} us, loadgen ${mg:-n/a} us CPU per message (${#raw[@]} and ${#gen[@]} runs)"
if [ -n "$mr" ] && [ -n "$mg" ]; then
  awk -v g="$mg" -v r="$mr" 'BEGIN { printf "loadgen / raw client: %.2f\n", g / r }'
fi
