#!/usr/bin/env bash
# Where the chat server's time goes: runs the echo-ratio load (the chat server
# and the echo floor side by side, see benches/src/bin/echo-ratio.rs), samples
# both servers with perf (cpu-clock at 999 Hz, DWARF call graphs) during one
# measuring window, and writes a flame graph of each as SVG plus the folded
# stacks, a top-functions table and the share of each operation
# (benches/perf-breakdown.py, in breakdown.md):
#
#   benches/profile.sh [OUT_DIR] [extra echo-ratio flags...]
#
# OUT_DIR defaults to reports/perf. Needs `perf` (OS package linux-perf) and
# inferno (`cargo install inferno`: inferno-collapse-perf, inferno-flamegraph).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-reports/perf}"
shift || true
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || { echo "needs $tool on the PATH (see the comment at the top)" >&2; exit 2; }
done
mkdir -p "$out"
cargo build --release -q -p chatscale-benches --bin echo-ratio
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# One long window: perf starts once the load is on and samples 15 s of it.
./target/release/echo-ratio --warmup 5 --window 25 --rounds 1 "$@" >"$tmp/ratio.txt" &
driver=$!
for _ in $(seq 1 600); do
    grep -q '^chat server pid' "$tmp/ratio.txt" 2>/dev/null && break
    sleep 0.1
done
read -r chat_pid echo_pid < <(sed -n 's/^chat server pid \([0-9]*\), echo server pid \([0-9]*\)$/\1 \2/p' "$tmp/ratio.txt")
sleep 7
perf record -q -F 999 -e cpu-clock --call-graph dwarf,16384 -p "$chat_pid" -o "$tmp/chat.data" -- sleep 15 &
chat_perf=$!
perf record -q -F 999 -e cpu-clock --call-graph dwarf,16384 -p "$echo_pid" -o "$tmp/echo.data" -- sleep 15 &
echo_perf=$!
wait "$chat_perf" "$echo_perf"
wait "$driver"
cat "$tmp/ratio.txt"
for side in chat echo; do
    perf script -i "$tmp/$side.data" 2>/dev/null | inferno-collapse-perf > "$out/$side.folded"
    inferno-flamegraph --title "$side server, echo-ratio load ($*)" < "$out/$side.folded" > "$out/$side.svg"
    # Self time by function, the top 40.
    perf report -i "$tmp/$side.data" --no-children --sort symbol --stdio 2>/dev/null \
        | awk '/^ +[0-9]/ && n++ < 40' > "$out/$side-top.txt"
done
cp "$tmp/ratio.txt" "$out/echo-ratio.txt"
python3 benches/perf-breakdown.py "$out/chat.folded" "$out/echo.folded" > "$out/breakdown.md"
echo "flame graphs: $out/chat.svg $out/echo.svg (folded stacks and top functions beside them)"
