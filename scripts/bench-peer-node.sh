#!/usr/bin/env bash
# Like-for-like with redis-semaphore for Node (the most used peer; ../shared/bench/README.md):
# its bench (`node bench.js URL OPS default,1`: one task, then 64 tasks on a semaphore of
# count 8, each task its own Semaphore instance, one shared ioredis connection, with the
# default retryInterval of 10 ms and with 1 ms) and this crate's
#   loadgen --coordinator 1 --handles 64 --tasks 64 --count 8
# (64 holders, one handle per task, all made from one Coordinator: one shared connection
# plus at most 64 blocking connections), in one run, on one fresh redis-server, REPEAT
# rounds; the order (peer first or loadgen first) alternates from round to round.
#
#   scripts/bench-peer-node.sh
#
# Prints per round and as medians: throughput, cycle latency p50/p99, connections, and
# the ratios of the same round: loadgen ops/s over redis-semaphore ops/s, and
# redis-semaphore p99 over loadgen p99 (the target of issue #8: >= 3x and >= 10x, with the
# connections within the coordinator's cap, 1 + 64).
#
# Environment: SECS (each loadgen run, default 5), OPS (the peer's operations per scenario,
# default 20000, as in ../shared/bench/README.md), REPEAT (default 3), VARIANTS (loadgen
# runs per round, space separated, default "coord64"; the others are for the
# investigation: own64 = 64 handles each with its own connections, no coordinator;
# coord64-drop = release by drop; coord64-t1 / coord64-t0 = tokio with 1 worker thread /
# the current-thread runtime; one64 = 64 tasks on ONE handle; coord64-smol = on smol),
# PEER_DIR (default $CARGO_TARGET_DIR/peer-node or target/peer-node; installed there from
# ../shared/bench/node when missing), OUT (default target/bench-results), SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-5}
OPS=${OPS:-20000}
REPEAT=${REPEAT:-3}
VARIANTS=${VARIANTS:-coord64}
TARGET=${CARGO_TARGET_DIR:-target}
PEER_DIR=${PEER_DIR:-$TARGET/peer-node}
OUT=${OUT:-target/bench-results}
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOG="$OUT/peer-node-$STAMP.log"
RAW="$OUT/peer-node-$STAMP.tsv"
exec > >(tee "$LOG") 2>&1

say() { printf '\n== %s\n' "$*"; }
kv() { { printf ' %s\n' "$1" | grep -o " $2=[^ ]*" || true; } | tail -n 1 | cut -d= -f2; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
minmax() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo, hi }'; }
ratio() { awk -v n="$1" -v o="$2" 'BEGIN { if (o + 0 == 0) print "nan"; else printf "%.2f", n / o }'; }
fmt0() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
fmt1() { awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }
fmt2() { awk -v x="$1" 'BEGIN { printf "%.2f", x }'; }

say "machine"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "cpu:     $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "kernel:  $(uname -sr)"
echo "redis:   $(redis-server --version)"
echo "rustc:   $(rustc --version)"
echo "node:    $(node --version)"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD 2>/dev/null || echo ' (plus uncommitted changes)')"
echo "plan:    REPEAT=$REPEAT SECS=$SECS OPS=$OPS VARIANTS='$VARIANTS'"

say "build"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --example loadgen --features smol,cluster
fi
LOADGEN=$TARGET/release/examples/loadgen
test -x "$LOADGEN" || { echo "error: no $LOADGEN" >&2; exit 1; }
if [ ! -d "$PEER_DIR/node_modules/redis-semaphore" ]; then
  mkdir -p "$PEER_DIR"
  cp -r ../shared/bench/node/. "$PEER_DIR/"
  (cd "$PEER_DIR" && npm install --silent)
fi

say "redis-server"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RDIR=$(mktemp -d)
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --dir "$RDIR" --pidfile "$RDIR/redis.pid" --logfile "$RDIR/redis.log" --loglevel warning \
  --maxclients 20000
cleanup() {
  redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 ||
    { [ -f "$RDIR/redis.pid" ] && kill "$(cat "$RDIR/redis.pid")" 2>/dev/null; } || true
  rm -rf "$RDIR"
}
trap cleanup EXIT
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
export REDIS_URL="redis://127.0.0.1:$PORT/"
echo "REDIS_URL=$REDIS_URL (fresh, no persistence)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

TIMECMD=()
if [ -x /usr/bin/time ] && /usr/bin/time -f 'cpu_time: user=%U sys=%S' true 2>/dev/null; then
  TIMECMD=(/usr/bin/time -f 'cpu_time: user=%U sys=%S')
fi

args_of() {
  local base="--handles 64 --tasks 64 --count 8 --secs $SECS"
  case $1 in
    coord64) echo "--coordinator 1 $base" ;;
    coord64-drop) echo "--coordinator 1 $base --release drop" ;;
    coord64-t1) echo "--coordinator 1 $base --threads 1" ;;
    coord64-t0) echo "--coordinator 1 $base --threads 0" ;;
    coord64-smol) echo "--coordinator 1 $base --runtime smol" ;;
    own64) echo "$base" ;;
    one64) echo "--tasks 64 --count 8 --secs $SECS" ;;
    *) echo "unknown variant $1" >&2; exit 1 ;;
  esac
}

printf 'round\twhat\tfields\n' >"$RAW"
server_cpu() { redis-cli -p "$PORT" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.3f", s }'; }

run_peer() { # round
  local r=$1 out c0 c1
  redis-cli -p "$PORT" flushall >/dev/null
  c0=$(server_cpu)
  out=$(timeout 600 "${TIMECMD[@]}" node "$PEER_DIR/bench.js" "redis://127.0.0.1:$PORT" "$OPS" default,1 2>&1) ||
    { echo "$out"; echo "error: the peer bench failed" >&2; exit 1; }
  c1=$(server_cpu)
  printf '%s\n' "$out" | sed 's/^/    /'
  local ri line det rate
  for ri in 10 1; do
    line=$(printf '%s\n' "$out" | grep "^redis-semaphore-node 64 tasks count=8 (retryInterval=$ri): " | tail -n 1)
    det=$(printf '%s\n' "$out" | grep "^redis-semaphore-node 64 tasks count=8 (retryInterval=$ri) detail: " | tail -n 1)
    rate=$(printf '%s\n' "$line" | sed 's/.*: \([0-9]*\) ops\/s.*/\1/')
    [ -n "$rate" ] || { echo "error: no result for retryInterval=$ri" >&2; exit 1; }
    printf '%s\tnode-ri%s\tops_per_sec=%s p50_us=%s p99_us=%s connections=%s cmds_per_op=%s errors=%s\n' \
      "$r" "$ri" "$rate" "$(kv "$det" p50_us)" "$(kv "$det" p99_us)" "$(kv "$det" connections)" \
      "$(kv "$det" redis_cmds_per_op)" "$(kv "$det" errors)" >>"$RAW"
  done
  local seq
  seq=$(printf '%s\n' "$out" | grep '^redis-semaphore-node sequential: ' | sed 's/.*: \([0-9]*\) ops\/s.*/\1/')
  printf '%s\tnode-seq\tops_per_sec=%s\n' "$r" "$seq" >>"$RAW"
  echo "round $r node: $(grep -P "^$r\tnode-" "$RAW" | cut -f2- | tr '\t' ' ' | tr '\n' ';') server_cpu_s=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.3f", b - a }') (all three scenarios)"
}

run_loadgen() { # round variant
  local r=$1 v=$2 out last opsl cmds scpu cpu_line fields client_us=
  redis-cli -p "$PORT" flushall >/dev/null
  # shellcheck disable=SC2046
  out=$(timeout 600 "${TIMECMD[@]}" "$LOADGEN" $(args_of "$v") 2>&1) ||
    { echo "$out"; echo "error: loadgen $v failed" >&2; exit 1; }
  printf '%s\n' "$out" | sed 's/^/    /'
  last=$(printf '%s\n' "$out" | grep '^loadgen: ops_per_sec=' | tail -n 1)
  opsl=$(printf '%s\n' "$out" | grep '^loadgen: ops=' | tail -n 1)
  cmds=$(printf '%s\n' "$out" | grep '^loadgen: server commands per cycle' | tail -n 1)
  scpu=$(printf '%s\n' "$out" | grep '^loadgen: server cpu' | tail -n 1)
  cpu_line=$(printf '%s\n' "$out" | grep '^cpu_time:' | tail -n 1 || true)
  if [ -n "$cpu_line" ]; then
    client_us=$(awk -v u="$(kv "$cpu_line" user)" -v y="$(kv "$cpu_line" sys)" -v n="$(kv "$opsl" ops)" 'BEGIN { if (n > 0) printf "%.2f", (u + y) * 1e6 / n }')
  fi
  fields="ops_per_sec=$(kv "$last" ops_per_sec) p50_us=$(kv "$last" p50_us) p99_us=$(kv "$last" p99_us) connections=$(kv "$last" connections) peak_open=$(kv "$opsl" peak_open_connections) evalsha=$(kv "$cmds" evalsha) blmove=$(kv "$cmds" blmove) server_cpu_us=$(kv "$scpu" per_op_us) client_cpu_us=$client_us"
  printf '%s\t%s\t%s\n' "$r" "$v" "$fields" >>"$RAW"
  echo "round $r $v: $fields"
}

say "runs (log: $LOG, raw: $RAW)"
T0=$(date +%s)
for r in $(seq "$REPEAT"); do
  echo "-- round $r/$REPEAT (load $(cut -d' ' -f1-3 /proc/loadavg))"
  if [ $((r % 2)) = 1 ]; then
    run_peer "$r"
    for v in $VARIANTS; do run_loadgen "$r" "$v"; done
  else
    for v in $VARIANTS; do run_loadgen "$r" "$v"; done
    run_peer "$r"
  fi
done
T1=$(date +%s)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); runs took $((T1 - T0)) s"

# vals WHAT KEY: the values of KEY, in round order.
vals() {
  awk -F'\t' -v w="$1" '$2 == w { print $1 "\t" $3 }' "$RAW" | sort -n |
    while IFS=$'\t' read -r _ f; do kv "$f" "$2"; done
}
# per-round ratios A/B of KEY between two rows
rratios() {
  paste <(vals "$1" "$3") <(vals "$2" "$3") | awk '{ if ($2 + 0 == 0) print "nan"; else printf "%.2f\n", $1 / $2 }'
}

say "results"
echo
echo "$REPEAT rounds on one redis-server, peer and loadgen alternating first; loadgen ${SECS} s per run, the peer $OPS operations per scenario. Medians (per-round values in brackets)."
echo
echo "| run | ops/s | p50 µs | p99 µs | connections | EVALSHA + BLMOVE per cycle | server CPU µs/cycle | client CPU µs/cycle |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for w in node-ri10 node-ri1; do
  echo "| redis-semaphore, retryInterval $(echo "$w" | sed 's/node-ri//') ms | $(fmt0 "$(median $(vals "$w" ops_per_sec))") ($(vals "$w" ops_per_sec | tr '\n' ' ' | sed 's/ $//')) | $(fmt0 "$(median $(vals "$w" p50_us))") | $(fmt0 "$(median $(vals "$w" p99_us))") ($(vals "$w" p99_us | tr '\n' ' ' | sed 's/ $//')) | $(median $(vals "$w" connections)) | $(median $(vals "$w" cmds_per_op)) commands | - | - |"
done
for v in $VARIANTS; do
  echo "| loadgen $(args_of "$v") | $(fmt0 "$(median $(vals "$v" ops_per_sec))") ($(vals "$v" ops_per_sec | tr '\n' ' ' | sed 's/ $//')) | $(fmt0 "$(median $(vals "$v" p50_us))") | $(fmt0 "$(median $(vals "$v" p99_us))") ($(vals "$v" p99_us | awk '{ printf "%.0f ", $1 }' | sed 's/ $//')) | $(median $(vals "$v" connections)) (peak open $(median $(vals "$v" peak_open))) | $(median $(vals "$v" evalsha)) + $(median $(vals "$v" blmove)) | $(fmt1 "$(median $(vals "$v" server_cpu_us))") | $(fmt1 "$(median $(vals "$v" client_cpu_us))") |"
done
echo
echo "Ratios, same round (throughput: loadgen / redis-semaphore, higher is better; p99: redis-semaphore / loadgen, higher is better):"
echo
echo "| loadgen run | vs | throughput ratio (median) | per round | p99 ratio (median) | per round |"
echo "| --- | --- | --- | --- | --- | --- |"
for v in $VARIANTS; do
  for w in node-ri10 node-ri1; do
    mapfile -t t < <(rratios "$v" "$w" ops_per_sec)
    mapfile -t p < <(rratios "$w" "$v" p99_us)
    echo "| $v | $w | **$(fmt2 "$(median "${t[@]}")")** | $(minmax "${t[@]}") (${t[*]}) | **$(fmt2 "$(median "${p[@]}")")** | $(minmax "${p[@]}") (${p[*]}) |"
  done
done
echo
echo "Per-round values are in $RAW."
