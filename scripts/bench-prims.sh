#!/usr/bin/env bash
# The primitives beyond the semaphore's cycle, each against a baseline measured in the same
# loadgen process, on one fresh redis-server (issues #9 and #10; docs/bench.md, runs M):
#   --mode mutex    lock/unlock against acquire/release on a semaphore of count 1
#   --mode many     acquire_many(k)/release against k single acquires, then k releases
#   --mode rwlock   reads and writes against acquire/release on a semaphore of max_readers
#   --mode fanout   the last of 1,000 waiters on a Notify after set(), against a PING
#
#   scripts/bench-prims.sh
#   SECS=2 PAIRS=5 ONLY="mutex many" scripts/bench-prims.sh
#
# Each configuration below is one loadgen process; in it the subject and its baseline run
# in PAIRS pairs of SECS seconds each, the order alternating from pair to pair (fanout:
# ROUNDS rounds, then the PING and raw redis-rs baselines). The load average is printed
# before every configuration, and the loadgen lines of each are kept in the log.
#
# Environment: SECS (each run, default 3), PAIRS (default 3), ROUNDS (fanout rounds, default
# 200), WAITERS (fanout, default 1000), ONLY (a subset of: mutex many rwlock fanout),
# RUNTIME (tokio or smol, default tokio), OUT (default target/bench-results), SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-3}
PAIRS=${PAIRS:-3}
ROUNDS=${ROUNDS:-200}
WAITERS=${WAITERS:-1000}
ONLY=${ONLY:-mutex many rwlock fanout}
RUNTIME=${RUNTIME:-tokio}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-target/bench-results}
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOG="$OUT/prims-$STAMP.log"
exec > >(tee "$LOG") 2>&1

say() { printf '\n== %s\n' "$*"; }

say "machine"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "cpu:     $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "kernel:  $(uname -sr)"
echo "redis:   $(redis-server --version)"
echo "rustc:   $(rustc --version)"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD 2>/dev/null || echo ' (plus uncommitted changes)')"
echo "plan:    SECS=$SECS PAIRS=$PAIRS ROUNDS=$ROUNDS WAITERS=$WAITERS RUNTIME=$RUNTIME ONLY='$ONLY'"

say "build"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --example loadgen --features smol,cluster
fi
LOADGEN=$TARGET/release/examples/loadgen
test -x "$LOADGEN" || { echo "error: no $LOADGEN" >&2; exit 1; }

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
RB=$(redis-benchmark -p "$PORT" -q -n 50000 -c 1 -t ping 2>&1 | tr '\r' '\n' | grep 'requests per second' | grep PING_MBULK || true)
echo "redis-benchmark -c 1 PING_MBULK at the start: $RB"

configs() {
  case $1 in
    mutex) printf '%s\n' "--tasks 1 --handles 1" "--tasks 4 --handles 1" "--tasks 4 --handles 4 --coordinator 1" ;;
    many) printf '%s\n' "--k 4 --count 8 --tasks 1" "--k 4 --count 8 --tasks 2" "--k 4 --count 8 --tasks 8" ;;
    rwlock) printf '%s\n' "--tasks 8 --write-pct 0" "--tasks 8 --write-pct 10" "--tasks 8 --write-pct 50" ;;
    fanout) printf '%s\n' "--waiters $WAITERS" "--waiters $WAITERS --handles 4" "--waiters $WAITERS --handles 4 --coordinator 1" ;;
    *) echo "unknown mode $1" >&2; exit 1 ;;
  esac
}

say "runs (log: $LOG)"
T0=$(date +%s)
SUMMARY=()
for mode in $ONLY; do
  while IFS= read -r cfg; do
    redis-cli -p "$PORT" flushall >/dev/null
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    # shellcheck disable=SC2086
    cmd="loadgen --mode $mode $cfg --runtime $RUNTIME --secs $SECS --pairs $PAIRS --rounds $ROUNDS"
    echo "-- $cmd (load $load)"
    # shellcheck disable=SC2086
    out=$(timeout 900 "$LOADGEN" --mode "$mode" $cfg --runtime "$RUNTIME" --secs "$SECS" \
      --pairs "$PAIRS" --rounds "$ROUNDS" 2>&1) || { echo "$out"; echo "error: $cmd failed" >&2; exit 1; }
    printf '%s\n' "$out" | sed 's/^/    /'
    last=$(printf '%s\n' "$out" | grep "^$mode: " | tail -n 1)
    SUMMARY+=("load $load | $last")
  done < <(configs "$mode")
done
T1=$(date +%s)
RB2=$(redis-benchmark -p "$PORT" -q -n 50000 -c 1 -t ping 2>&1 | tr '\r' '\n' | grep 'requests per second' | grep PING_MBULK || true)
echo "redis-benchmark -c 1 PING_MBULK at the end: $RB2"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); runs took $((T1 - T0)) s"

say "results (the last line of each run)"
printf '%s\n' "${SUMMARY[@]}"
