#!/usr/bin/env bash
# Where the chat server's time goes: runs the echo-ratio load (the chat server,
# the echo floor and the relay floor side by side, see
# benches/src/bin/echo-ratio.rs), samples the servers with perf (cpu-clock at 999 Hz, DWARF call graphs) during one
# measuring window, and writes a flame graph of each as SVG plus the folded
# stacks, a top-functions table and the share of each operation
# (benches/perf-breakdown.py, in breakdown.md):
#
#   benches/profile.sh [OUT_DIR] [extra echo-ratio flags...]
#
# OUT_DIR defaults to reports/perf. Needs `perf` (OS package linux-perf);
# flame graphs need inferno (`cargo install inferno`: inferno-flamegraph),
# without which only the folded stacks (folded by benches/perf-fold.py), the
# tables and breakdown.md are written. CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-reports/perf}"
shift || true
command -v perf >/dev/null || { echo "needs perf on the PATH (see the comment at the top)" >&2; exit 2; }
mkdir -p "$out"
cargo build --release -q -p chatscale-benches --bin echo-ratio
target="${CARGO_TARGET_DIR:-target}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# One long window: perf starts once the load is on and samples 15 s of it.
"$target/release/echo-ratio" --warmup 5 --window 25 --rounds 1 "$@" >"$tmp/ratio.txt" &
driver=$!
for _ in $(seq 1 600); do
    grep -q '^chat server pid' "$tmp/ratio.txt" 2>/dev/null && break
    sleep 0.1
done
read -r chat_pid echo_pid < <(sed -n 's/^chat server pid \([0-9]*\), echo server pid \([0-9]*\)$/\1 \2/p' "$tmp/ratio.txt")
for _ in $(seq 1 100); do
    grep -q '^relay server pid' "$tmp/ratio.txt" 2>/dev/null && break
    sleep 0.1
done
relay_pid="$(sed -n 's/^relay server pid \([0-9]*\)$/\1/p' "$tmp/ratio.txt")"
sleep 7
perfs=()
for side in chat echo relay; do
    pid_var="${side}_pid"
    perf record -q -F 999 -e cpu-clock --call-graph dwarf,16384 -p "${!pid_var}" -o "$tmp/$side.data" -- sleep 15 &
    perfs+=($!)
done
wait "${perfs[@]}"
wait "$driver"
cat "$tmp/ratio.txt"
for side in chat echo relay; do
    perf script -i "$tmp/$side.data" 2>/dev/null | python3 benches/perf-fold.py > "$out/$side.folded"
    if command -v inferno-flamegraph >/dev/null; then
        inferno-flamegraph --title "$side server, echo-ratio load ($*)" < "$out/$side.folded" > "$out/$side.svg"
    fi
    # Self time by function, the top 40.
    perf report -i "$tmp/$side.data" --no-children --sort symbol --stdio 2>/dev/null \
        | awk '/^ +[0-9]/ && n++ < 40' > "$out/$side-top.txt"
done
cp "$tmp/ratio.txt" "$out/echo-ratio.txt"
python3 benches/perf-breakdown.py "$out/chat.folded" "$out/relay.folded" "$out/echo.folded" > "$out/breakdown.md"
echo "profiles: $out/{chat,relay,echo}.folded (and .svg with inferno), top functions, breakdown.md"
