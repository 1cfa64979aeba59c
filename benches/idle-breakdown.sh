#!/usr/bin/env bash
# What an idle connection's memory is made of: runs the reference server under
# heaptrack (OS package `heaptrack`), opens COUNT idle connections with the
# idle-connections bench (10 devices per user, each reads `hello`, then waits),
# stops the server, and prints the heap at its peak by allocation site, divided
# by the connection count: the bytes each kind of allocation costs one idle
# connection. The idle-connections bench's own RSS figure covers the same
# connections; what the heap does not show is the allocator's overhead and the
# kernel side.
#
#   benches/idle-breakdown.sh [COUNT] [extra server flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-10000}"
shift || true
command -v heaptrack >/dev/null || { echo "needs heaptrack (apt-get install heaptrack)" >&2; exit 2; }
cargo build --release -q -p reference-server -p chatscale-benches --bin reference-server --bin idle-connections
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
heaptrack -o "$tmp/idle" ./target/release/reference-server --listen 127.0.0.1:0 --storage memory \
    --password-hash-memory-kib 8 --password-hash-iterations 1 "$@" >"$tmp/out.txt" 2>"$tmp/err.txt" &
for _ in $(seq 1 300); do
    grep -q '^listening on' "$tmp/out.txt" 2>/dev/null && break
    sleep 0.1
done
url="$(sed -n 's/^listening on //p' "$tmp/out.txt")"
pid="$(pgrep -f -n "^./target/release/reference-server --listen 127.0.0.1:0 --storage memory")"
./target/release/idle-connections --target "$url" --pid "$pid" "$count"
kill -TERM "$pid"
wait
file="$(ls "$tmp"/idle*.zst "$tmp"/idle*.gz 2>/dev/null | head -1)"
heaptrack_print -f "$file" --print-peaks 1 --print-allocators 0 --print-temporary 0 \
    --print-leaks 0 --merge-backtraces 0 --peak-limit 40 >"$tmp/peaks.txt" 2>/dev/null || true
python3 - "$tmp/peaks.txt" "$count" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
count = int(sys.argv[2])
units = {"B": 1, "K": 1e3, "M": 1e6, "G": 1e9}
section = text.split("MOST MEMORY CONSUMING ALLOCATION CALLS")[-1]
entries = re.split(r"\n(?=\d+(?:\.\d+)?[BKMG] peak memory consumed)", "\n" + section)
rows = []
for e in entries:
    m = re.match(r"\s*(\d+(?:\.\d+)?)([BKMG]) peak memory consumed over (\d+) calls from", e)
    if not m:
        continue
    peak = float(m.group(1)) * units[m.group(2)]
    frames = [l.strip() for l in e.splitlines()[1:] if l.strip()]
    # The first frame that is ours or names a library type is the site.
    site = next((f for f in frames if "reference_server" in f or "tungstenite" in f
                 or "hyper" in f or "tokio::" in f or "axum" in f), frames[0] if frames else "?")
    rows.append((peak, int(m.group(3)), site[:150]))
print(f"heap at peak by allocation site, per idle connection ({count} connections):")
for peak, calls, site in sorted(rows, reverse=True):
    if peak / count >= 4:
        print(f"{peak / count:8.0f} B  {calls:8d} calls  {site}")
EOF
