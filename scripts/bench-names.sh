#!/usr/bin/env bash
# Many names on one Coordinator, on one redis-server and on a local Redis Cluster (3
# primaries + 3 replicas), in one run: `loadgen --mode names` for 1, 100 and 1,000 names on
# both, back to back on the same servers, REPEAT rounds (the single/cluster order alternates
# from round to round). Prints a Markdown table: per topology and number of names, the
# median over the rounds of throughput, cycle latency p50/p99, connections (opened during
# the run, and the most open at once, summed over every node; the most opened on any one
# node), the coordinator's peak blocking connections and queued waits, redirections, and
# the CPU per cycle of the servers (INFO cpu) and of loadgen (GNU time).
#
#   scripts/bench-names.sh
#
# Each run: FLUSHALL (every primary), then
#   loadgen --mode names --names N --secs $SECS [--cluster]
# i.e. N semaphores of count 1 on one coordinator (max 32 blocking connections, the
# library's default), 2 tasks per name, each task a handle (a holder) of its own: every
# name has one holder and one waiter, every cycle goes through Redis.
#
# Environment: SECS (each run, default 5), REPEAT (default 3), NAMES (default "1 100 1000"),
# EXTRA (more loadgen arguments for every run, e.g. "--max-blocking 64"), OUT (log and raw
# results, default target/bench-results), SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-5}
REPEAT=${REPEAT:-3}
NAMES=${NAMES:-1 100 1000}
EXTRA=${EXTRA:-}
OUT=${OUT:-target/bench-results}
TARGET=${CARGO_TARGET_DIR:-target}
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOG="$OUT/names-$STAMP.log"
RAW="$OUT/names-$STAMP.tsv"
exec > >(tee "$LOG") 2>&1

say() { printf '\n== %s\n' "$*"; }
# kv LINE KEY: the value of KEY=value in LINE.
kv() { { printf ' %s\n' "$1" | grep -o " $2=[^ ]*" || true; } | tail -n 1 | cut -d= -f2; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
minmax() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f-%.0f", lo, hi }'; }
fmt0() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
fmt1() { awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

say "machine"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "cpu:     $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "kernel:  $(uname -sr)"
echo "redis:   $(redis-server --version)"
echo "rustc:   $(rustc --version)"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD 2>/dev/null || echo ' (plus uncommitted changes)')"
echo "plan:    REPEAT=$REPEAT SECS=$SECS NAMES='$NAMES' EXTRA='$EXTRA'"

say "build"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --example loadgen --features smol,cluster
fi
LOADGEN=$TARGET/release/examples/loadgen
test -x "$LOADGEN" || { echo "error: no $LOADGEN" >&2; exit 1; }

say "servers"
PORT=$(free_port)
RDIR=$(mktemp -d)
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --dir "$RDIR" --pidfile "$RDIR/redis.pid" --logfile "$RDIR/redis.log" --loglevel warning \
  --maxclients 20000
# The cluster: started by loadgen's harness (tests/common/cluster.rs), served until the
# pipe to its standard input closes (when this script exits).
coproc CLUSTER { exec "$LOADGEN" --mode cluster-serve 2>&1; }
CLUSTER_PID=$CLUSTER_PID
cleanup() {
  redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 ||
    { [ -f "$RDIR/redis.pid" ] && kill "$(cat "$RDIR/redis.pid")" 2>/dev/null; } || true
  rm -rf "$RDIR"
  # Closing its standard input stops the cluster (its nodes are stopped, their directories
  # removed); wait for that.
  if [ -n "${CLUSTER_IN:-}" ]; then exec {CLUSTER_IN}>&-; fi
  wait "$CLUSTER_PID" 2>/dev/null || true
}
trap cleanup EXIT
# Our own copies of the coprocess's pipes (bash may drop its variables when it exits),
# the originals closed: only CLUSTER_IN keeps its standard input open.
exec {CLUSTER_IN}>&"${CLUSTER[1]}" {CLUSTER_OUT}<&"${CLUSTER[0]}"
eval "exec ${CLUSTER[1]}>&- ${CLUSTER[0]}<&-"
URLS=
while IFS= read -r -t 120 line <&"$CLUSTER_OUT"; do
  echo "cluster-serve: $line"
  case $line in cluster:\ REDIS_CLUSTER_URLS=*) URLS=${line#cluster: REDIS_CLUSTER_URLS=}; break ;; esac
done
[ -n "$URLS" ] || { echo "error: the cluster did not start" >&2; exit 1; }
export REDIS_CLUSTER_URLS=$URLS
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
export REDIS_URL="redis://127.0.0.1:$PORT/"
echo "single:  $REDIS_URL (fresh, no persistence)"
echo "cluster: $REDIS_CLUSTER_URLS"
CPORTS=$(printf '%s\n' "$URLS" | tr ',' '\n' | sed 's|.*:\([0-9]*\)/*$|\1|')
primaries() { for p in $CPORTS; do redis-cli -p "$p" role 2>/dev/null | head -n 1 | grep -qx master && echo "$p"; done; }
echo "cluster primaries: $(primaries | tr '\n' ' ')"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

TIMECMD=()
if [ -x /usr/bin/time ] && /usr/bin/time -f 'cpu_time: user=%U sys=%S' true 2>/dev/null; then
  TIMECMD=(/usr/bin/time -f 'cpu_time: user=%U sys=%S')
fi

printf 'round\ttopology\tnames\tfields\n' >"$RAW"
run_one() { # round topology names
  local r=$1 topo=$2 n=$3 out last cpu_line node_lines cpu_s= client_us= flags=()
  if [ "$topo" = cluster ]; then
    for p in $(primaries); do redis-cli -p "$p" flushall >/dev/null; done
    flags=(--cluster)
  else
    redis-cli -p "$PORT" flushall >/dev/null
  fi
  # shellcheck disable=SC2086
  out=$(timeout 600 "${TIMECMD[@]}" "$LOADGEN" --mode names --names "$n" --secs "$SECS" "${flags[@]}" $EXTRA 2>&1) ||
    { echo "$out"; echo "error: $topo names=$n failed" >&2; exit 1; }
  last=$(printf '%s\n' "$out" | grep '^names: ' | tail -n 1)
  [ -n "$last" ] || { echo "$out"; echo "error: no result line ($topo names=$n)" >&2; exit 1; }
  local ops cmds scpu
  ops=$(kv "$(printf '%s\n' "$out" | grep '^loadgen: ops=' | tail -n 1)" ops)
  cmds=$(printf '%s\n' "$out" | grep '^loadgen: server commands per cycle' | tail -n 1)
  scpu=$(printf '%s\n' "$out" | grep '^loadgen: server cpu' | tail -n 1)
  cpu_line=$(printf '%s\n' "$out" | grep '^cpu_time:' | tail -n 1 || true)
  if [ -n "$cpu_line" ] && [ -n "$ops" ]; then
    cpu_s=$(awk -v u="$(kv "$cpu_line" user)" -v y="$(kv "$cpu_line" sys)" 'BEGIN { printf "%.3f", u + y }')
    client_us=$(awk -v c="$cpu_s" -v n="$ops" 'BEGIN { if (n > 0) printf "%.2f", c * 1e6 / n }')
  fi
  # The most connections any one node accepted / had open at once.
  node_lines=$(printf '%s\n' "$out" | grep '^loadgen: node ' || true)
  local node_opened node_peak
  node_opened=$(printf '%s\n' "$node_lines" | grep -o ' opened=[0-9]*' | cut -d= -f2 | sort -n | tail -n 1)
  node_peak=$(printf '%s\n' "$node_lines" | grep -o ' peak_open=[0-9]*' | cut -d= -f2 | sort -n | tail -n 1)
  local fields
  fields="ops_per_sec=$(kv "$last" ops_per_sec) p50_us=$(kv "$last" p50_us) p99_us=$(kv "$last" p99_us) connections=$(kv "$last" connections) peak_open=$(kv "$last" peak_open) node_opened_max=$node_opened node_peak_max=$node_peak blocking_peak=$(kv "$last" blocking_peak) queued_peak=$(kv "$last" queued_peak) redirections=$(kv "$last" redirections) permits_ok=$(kv "$last" permits_ok) evalsha=$(kv "$cmds" evalsha) blmove=$(kv "$cmds" blmove) server_cpu_us=$(kv "$scpu" per_op_us) client_cpu_us=$client_us"
  printf '%s\t%s\t%s\t%s\n' "$r" "$topo" "$n" "$fields" >>"$RAW"
  printf '%s\n' "$out" | sed 's/^/    /'
  printf 'round %s %-7s names=%-5s %s\n' "$r" "$topo" "$n" "$fields"
}

say "runs (log: $LOG, raw: $RAW)"
T0=$(date +%s)
for r in $(seq "$REPEAT"); do
  if [ $((r % 2)) = 1 ]; then order="single cluster"; else order="cluster single"; fi
  echo "-- round $r/$REPEAT (order: $order; load $(cut -d' ' -f1-3 /proc/loadavg))"
  for n in $NAMES; do
    for t in $order; do run_one "$r" "$t" "$n"; done
  done
done
T1=$(date +%s)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); runs took $((T1 - T0)) s"

# vals TOPOLOGY NAMES KEY: the values of KEY, in round order.
vals() {
  awk -F'\t' -v t="$1" -v n="$2" '$2 == t && $3 == n { print $1 "\t" $4 }' "$RAW" | sort -n |
    while IFS=$'\t' read -r _ f; do kv "$f" "$3"; done
}

say "results"
echo
echo "Medians over $REPEAT rounds (single and cluster alternating), ${SECS} s per run, count 1, 2 tasks per name (each its own handle), one coordinator, max 32 blocking connections${EXTRA:+, extra: $EXTRA}."
echo
echo "| topology | names | ops/s (median) | ops/s per round | p50 µs | p99 µs | connections opened (all nodes) | most open at once (all nodes) | most opened / open on one node | blocking conns (peak) | queued waits (peak) | redirections | EVALSHA + BLMOVE per cycle | server CPU µs/cycle | loadgen CPU µs/cycle | permits ok |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for t in single cluster; do
  for n in $NAMES; do
    mapfile -t o < <(vals "$t" "$n" ops_per_sec)
    ok=$(vals "$t" "$n" permits_ok | sort -u | tr '\n' ' ')
    echo "| $t | $n | $(fmt0 "$(median "${o[@]}")") | ${o[*]} | $(fmt1 "$(median $(vals "$t" "$n" p50_us))") | $(fmt1 "$(median $(vals "$t" "$n" p99_us))") | $(fmt0 "$(median $(vals "$t" "$n" connections))") ($(minmax $(vals "$t" "$n" connections))) | $(fmt0 "$(median $(vals "$t" "$n" peak_open))") | $(fmt0 "$(median $(vals "$t" "$n" node_opened_max))") / $(fmt0 "$(median $(vals "$t" "$n" node_peak_max))") | $(fmt0 "$(median $(vals "$t" "$n" blocking_peak))") | $(fmt0 "$(median $(vals "$t" "$n" queued_peak))") | $(fmt0 "$(median $(vals "$t" "$n" redirections))") | $(median $(vals "$t" "$n" evalsha)) + $(median $(vals "$t" "$n" blmove)) | $(fmt1 "$(median $(vals "$t" "$n" server_cpu_us))") | $(fmt1 "$(median $(vals "$t" "$n" client_cpu_us))") | $ok|"
  done
done
echo
echo "Per-round values are in $RAW."
