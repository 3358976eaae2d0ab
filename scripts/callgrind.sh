#!/usr/bin/env bash
# Instructions per request of respite serving redis-benchmark, counted by valgrind's
# callgrind: deterministic where timings on a shared VM are not, so it shows small changes
# (an A/B of two commits is two runs of this script).
#
#   scripts/callgrind.sh [get|set] [pipeline] [requests] [healthy|outage]
#       defaults: get 16 200000 healthy (pipeline 1: use ~20000 requests)
#
# Starts its own redis-server and respite (under callgrind) on free loopback ports, warms
# up, zeroes the counters, runs the measured requests (50 clients, 64-byte values) and
# prints the whole process's instructions per request and the top functions (inclusive).
# "outage" holds respite in outage mode with a drill, so requests are served locally.
# The profile stays in target/callgrind.out for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=${1:-get}
PIPELINE=${2:-16}
N=${3:-200000}
MODE=${4:-healthy}

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release -q

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

REDIS_PORT=$(port); PORT=$(port); ADMIN=$(port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
pids+=($!)
printf '[admin]\ntoken = "callgrind"\n[journal]\nmax_entries = 100000000\nmax_bytes = "8GiB"\n' > "$work/respite.toml"
out=target/callgrind.out
rm -f "$out" "$out".*
valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no \
  ./target/release/respite --config "$work/respite.toml" --listen "127.0.0.1:$PORT" \
  --admin-listen "127.0.0.1:$ADMIN" --upstream "redis://127.0.0.1:$REDIS_PORT" --log-level warn \
  >"$work/respite.log" 2>&1 &
vg=$!
pids+=($vg)
for _ in $(seq 1 100); do redis-cli -p "$PORT" PING >/dev/null 2>&1 && break; sleep 0.2; done
if [ "$MODE" = outage ]; then
  exec 3<>"/dev/tcp/127.0.0.1/$ADMIN"
  body='{"state":"down"}'
  printf 'POST /admin/drill HTTP/1.0\r\nAuthorization: Bearer callgrind\r\nContent-Length: %s\r\n\r\n%s' "${#body}" "$body" >&3
  cat <&3 >/dev/null
  exec 3<&-
fi
redis-cli -p "$PORT" SET key:__rand_int__ seed >/dev/null
bench() { redis-benchmark -p "$PORT" -c 50 -n "$1" -d 64 -P "$PIPELINE" -t "$TEST" -q >/dev/null 2>&1; }
bench 2000
callgrind_control -z "$vg" >/dev/null 2>&1
bench "$N"
callgrind_control -d "$vg" >/dev/null 2>&1
sleep 1
part=$(ls "$out".* | head -1)
total=$(callgrind_annotate "$part" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$TEST -P $PIPELINE, $MODE: $total instructions for $N requests = $((total / N)) per request"
callgrind_annotate --inclusive=yes "$part" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | grep -E 'respite::' | head -25 \
  | sed -E "s|$PWD/||; s|/root/.cargo/registry/src/[^/]+/||; s|/rustc/[0-9a-f]+/||"
