#!/usr/bin/env bash
# Load benchmark: redis-benchmark against redis-server directly, through twemproxy
# (Debian's nutcracker, when installable) and through respite, in interleaved rounds on
# the same machine; prints the median requests/s of each and the ratios.
#
#   scripts/bench.sh [rounds]        (default 5 rounds; env: CLIENTS=50 REQUESTS=200000)
#
# Everything runs on loopback ports chosen here; nothing touches 6379. Performance is
# measured here, never asserted in tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
CLIENTS=${CLIENTS:-50}
REQUESTS=${REQUESTS:-200000}
SIZE=${SIZE:-64}

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v nutcracker >/dev/null || missing+=(nutcracker)
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || true
fi
cargo build --release -q

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || echo $((20000 + RANDOM % 20000)); }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

REDIS_PORT=$(port); RESPITE_PORT=$(port); ADMIN_PORT=$(port); NUT_PORT=$(port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
pids+=($!)
./target/release/respite --listen "127.0.0.1:$RESPITE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --upstream "redis://127.0.0.1:$REDIS_PORT" --log-level error &
pids+=($!)
# A second respite for outage mode (drill) and the replay rate: admin token, large journal.
OUT_PORT=$(port); OUT_ADMIN=$(port)
# Room for every SET the outage rounds journal (they are replayed only at the end), and
# the 1,000,000 of the replay measurement.
JOURNAL_ENTRIES=$((ROUNDS * REQUESTS * 5 + 1100000))
cat > "$work/outage.toml" <<CFG
[admin]
token = "bench"
[journal]
max_entries = $JOURNAL_ENTRIES
max_bytes = "8GiB"
CFG
./target/release/respite --config "$work/outage.toml" --listen "127.0.0.1:$OUT_PORT" --admin-listen "127.0.0.1:$OUT_ADMIN" \
  --upstream "redis://127.0.0.1:$REDIS_PORT" --log-level warn &
pids+=($!)
targets=("redis:$REDIS_PORT" "respite:$RESPITE_PORT")
# The process behind each target name, for the CPU each request costs it.
declare -A pid_of=([redis]=${pids[0]} [respite]=${pids[1]} [outage]=${pids[2]})
if command -v nutcracker >/dev/null; then
  cat > "$work/nut.yml" <<NUT
bench:
  listen: 127.0.0.1:$NUT_PORT
  hash: fnv1a_64
  distribution: ketama
  redis: true
  servers:
   - 127.0.0.1:$REDIS_PORT:1
NUT
  # Its stats port too (default 22222): a second twemproxy on the machine would take it.
  nutcracker -c "$work/nut.yml" -s "$(port)" -o "$work/nut.log" -p "$work/nut.pid" &
  pids+=($!)
  pid_of[twemproxy]=$!
  targets=("redis:$REDIS_PORT" "twemproxy:$NUT_PORT" "respite:$RESPITE_PORT")
fi
sleep 1
for t in "${targets[@]}"; do redis-cli -p "${t#*:}" PING >/dev/null; done

results="$work/results"
: > "$results"
# CPU time (user + system, clock ticks) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# rounds FILE NAME:PORT...: GET and SET at pipeline 1 and 16 against each target, in
# interleaved rounds; one line per measurement: "name test pipeline requests/s round
# cpu cpu-redis", the last two the CPU microseconds per request of the target's process
# and of redis-server (for redis itself both are redis's).
rounds() {
  local file=$1; shift
  for r in $(seq 1 "$ROUNDS"); do
    for pipeline in 1 16; do
      for test in get set; do
        for t in "$@"; do
          n=$REQUESTS; [ "$pipeline" -gt 1 ] && n=$((REQUESTS * 4))
          p=${pid_of[${t%%:*}]}; c0=$(ticks "$p"); r0=$(ticks "${pid_of[redis]}")
          rps=$(redis-benchmark -p "${t#*:}" -c "$CLIENTS" -n "$n" -P "$pipeline" -d "$SIZE" -t "$test" -q 2>/dev/null \
            | tr '\r' '\n' | awk '/requests per second/ {print $2}' | tail -1)
          c1=$(ticks "$p"); r1=$(ticks "${pid_of[redis]}")
          echo "${t%%:*} $test $pipeline ${rps:-0} $r $(awk -v a=$((c1 - c0)) -v b=$((r1 - r0)) -v n="$n" -v u="$TICK_US" \
            'BEGIN { printf "%.2f %.2f", a * u / n, b * u / n }')" >> "$file"
        done
      done
    done
    echo "round $r/$ROUNDS done" >&2
  done
}
rounds "$results" "${targets[@]}"

# The median over rounds of the ratio b/a measured in the same round: steadier than the
# ratio of medians when the machine's speed drifts between rounds.
paired() { # file a b test pipeline
  awk -v a="$2" -v b="$3" -v t="$4" -v p="$5" '$2==t && $3==p { v[$1 " " $5] = $4; r[$5] = 1 }
    END { for (k in r) if (v[a " " k] > 0) print v[b " " k] / v[a " " k] }' "$1" | median | awk '{ printf "%.2f", $1 }'
}
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# at FILE NAME TEST PIPELINE [COLUMN]: the median over rounds of a column of the lines
# `rounds` wrote (4: requests/s, the default; 6: CPU per request; 7: redis's CPU per request).
at() { awk -v n="$2" -v t="$3" -v p="$4" -v col="${5:-4}" '$1==n && $2==t && $3==p {print $col}' "$1" | median; }
printf '\n%s clients, %s-byte values, median of %s interleaved rounds (requests/s)\n\n' "$CLIENTS" "$SIZE" "$ROUNDS"
printf '| test | pipeline | redis | twemproxy | respite | respite/redis | respite/twemproxy | paired respite/redis |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for pipeline in 1 16; do
  for test in get set; do
    redis=$(at "$results" redis "$test" "$pipeline"); twem=$(at "$results" twemproxy "$test" "$pipeline")
    resp=$(at "$results" respite "$test" "$pipeline")
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
    printf '| %s | %s | %.0f | %.0f | %.0f | %s | %s | %s |\n' "${test^^}" "$pipeline" "$redis" "$twem" "$resp" \
      "$(ratio "$resp" "$redis")" "$(ratio "$resp" "$twem")" "$(paired "$results" redis respite "$test" "$pipeline")"
  done
done

# CPU per request: steadier than requests/s on a shared 2-core machine, and the proxy's own
# cost next to twemproxy's.
printf '\nCPU microseconds per request (median of %s rounds): the target process, and redis-server behind a proxy\n\n' "$ROUNDS"
printf '| test | pipeline | redis | twemproxy | redis behind twemproxy | respite | redis behind respite |\n'
printf '|---|---|---|---|---|---|---|\n'
for pipeline in 1 16; do
  for test in get set; do
    c() { at "$results" "$1" "$test" "$pipeline" "$2"; }
    printf '| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f |\n' "${test^^}" "$pipeline" "$(c redis 6)" \
      "$(c twemproxy 6)" "$(c twemproxy 7)" "$(c respite 6)" "$(c respite 7)"
  done
done

# ---- outage mode: served from memory (drill), against redis direct, interleaved ----
http() { # method path [body] -> body (bash /dev/tcp: no curl needed)
  local body=${3:-}
  exec 3<>"/dev/tcp/127.0.0.1/$OUT_ADMIN"
  printf '%s %s HTTP/1.0\r\nAuthorization: Bearer bench\r\nContent-Length: %s\r\n\r\n%s' "$1" "$2" "${#body}" "$body" >&3
  sed -e '1,/^\r$/d' <&3
  exec 3<&-
}
status_field() { http GET /status | tr ',{}' '\n\n\n' | awk -F: -v k="\"$1\"" '$1==k {print $2; exit}'; }
redis-cli -p "$OUT_PORT" SET key:__rand_int__ seed >/dev/null
http POST /admin/drill '{"state":"down"}' >/dev/null
: > "$work/outage"
rounds "$work/outage" "redis:$REDIS_PORT" "outage:$OUT_PORT"
printf '\nOutage mode (drill: served from the local store, writes journaled), median of %s rounds\n\n' "$ROUNDS"
printf '| test | pipeline | redis | respite (outage) | ratio | paired ratio | CPU us/request: redis | respite (outage) |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for pipeline in 1 16; do
  for test in get set; do
    m() { at "$work/outage" "$1" "$test" "$pipeline" "${2:-4}"; }
    a=$(m redis); b=$(m outage)
    printf '| %s | %s | %.0f | %.0f | %s | %s | %.2f | %.2f |\n' "${test^^}" "$pipeline" "$a" "$b" \
      "$(awk -v a="$b" -v b="$a" 'BEGIN { if (b > 0) printf "%.2f", a / b }')" "$(paired "$work/outage" redis outage "$test" "$pipeline")" \
      "$(m redis 6)" "$(m outage 6)"
  done
done

# ---- replay rate: 1,000,000 journaled writes drained to the upstream ----
http POST /admin/drill '{"state":"auto"}' >/dev/null
while [ "$(status_field state)" != '"healthy"' ]; do sleep 0.1; done
http POST /admin/drill '{"state":"down"}' >/dev/null
redis-benchmark -p "$OUT_PORT" -c 50 -n 1000000 -P 16 -r 100000 -d "$SIZE" -t set -q >/dev/null 2>&1
entries=$(status_field entries)
http POST /admin/drill '{"state":"auto"}' >/dev/null
# The clock starts when the probe has seen the upstream (state replaying), not at the
# drill's end: the probe interval (0.5 s) is not replay time.
while [ "$(status_field state)" = '"down"' ]; do sleep 0.005; done
start=$(date +%s.%N)
while [ "$(status_field state)" != '"healthy"' ]; do sleep 0.02; done
end=$(date +%s.%N)
awk -v n="$entries" -v s="$start" -v e="$end" 'BEGIN { printf "\nReplay: %d journaled writes drained in %.2f s = %.0f writes/s\n", n, e - s, n / (e - s) }'

# ---- idle memory: RSS growth of respite over 1,000 idle clients that each ran one command ----
RESPITE_PID=${pids[1]}
python3 - "$RESPITE_PORT" "$RESPITE_PID" <<'PY'
import socket, sys, time
port, pid = int(sys.argv[1]), sys.argv[2]
def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
def connect():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    assert s.recv(16) == b"+PONG\r\n"
    return s
warm = [connect() for _ in range(50)]  # the runtime's own first-use allocations
time.sleep(0.5)
before = rss_kib()
clients = [connect() for _ in range(1000)]
time.sleep(0.5)
after = rss_kib()
print(f"\nIdle memory: {(after - before) / 1000:.1f} KiB per client connection "
      f"(RSS {before} KiB -> {after} KiB over 1,000 idle clients that each ran PING)")
PY
