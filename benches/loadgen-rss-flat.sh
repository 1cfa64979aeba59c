#!/usr/bin/env bash
# loadgen RSS over a long run, from a report.json's memory timeline: one row a
# minute, then the least-squares slope of loadgen's RSS over the samples taken
# after the ramp (at 10,000 connected devices, past 75 s), and the RSS slope
# per connected device over the ramp.
#
#   benches/loadgen-rss-flat.sh reports/runs/generator-cost-10m-.../report.json
#
# Made for scenarios/generator-cost-10m.toml (10,000 devices, 60 s ramp).
set -euo pipefail
command -v jq >/dev/null || { echo "this script reads report.json with jq: apt-get install jq" >&2; exit 2; }
r="$1"
echo "| time | devices | loadgen RSS (MiB) | server RSS (MiB) |"
echo "|---:|---:|---:|---:|"
jq -r '.memory[] | "\(.t_ms) \(.connections) \(.loadgen_rss_bytes) \(.server_rss_bytes)"' "$r" | awk 'NR%60==1' | awk '{printf "| %4.0f s | %6d | %6.1f | %6.1f |\n", $1/1000, $2, $3/1048576, $4/1048576}'
jq -r '.memory[] | "\(.t_ms) \(.connections) \(.loadgen_rss_bytes)"' "$r" | awk '$1>75000 && $2==10000 {n++; x+=$1/1000; y+=$3; xx+=($1/1000)^2; xy+=($1/1000)*$3; if(!min||$3<min)min=$3; if($3>max)max=$3} END {d=n*xx-x*x; printf "after the ramp: %d samples, loadgen RSS min %.1f MiB, max %.1f MiB, least-squares slope %.1f KiB per minute\n", n, min/1048576, max/1048576, (n*xy-x*y)/d*60/1024}'
jq -r '.memory[] | select(.connections>0 and .connections<10000) | "\(.connections) \(.loadgen_rss_bytes)"' "$r" | awk '{n++; x+=$1; y+=$2; xx+=$1*$1; xy+=$1*$2} END {d=n*xx-x*x; printf "ramp: %.2f KiB of loadgen RSS per connected device (slope over %d samples)\n", (n*xy-x*y)/d/1024, n}'
