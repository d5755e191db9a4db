#!/usr/bin/env bash
# Every measurement of docs/bench.md in one go, on one fresh redis-server:
#  1. redis-benchmark, the physical limit (the lines of ../shared/bench/README.md);
#  2. REPEAT rounds, each: the Python reference redsync 2.0.0 (sequential, 64 tasks), then
#     examples/loadgen.rs for 1 task count 1 and 64 tasks count 8 on each runtime. Rounds
#     interleave the reference and this crate so that both see the same machine (it is
#     shared: other jobs come and go); the table uses the median of the rounds;
#  3. once per runtime: 64 tasks on 64 handles (one handle per task, the shape of the Python
#     bench; for information), 1 task releasing by drop (for information), the handoff between two handles (with the PING round trip
#     measured right before it), and 10,000 waiters.
# Prints a table with the ratios against the baselines of this same run; the full log goes
# to $OUT.
#
#   scripts/bench.sh
#
# Environment: SECS (each loadgen cycle run, default 5), REPEAT (default 5), PY_OPS
# (default 20000), ROUNDS (handoff samples, default 2000), WAITERS (default 10000),
# RUNTIMES (default "tokio smol"), PEER (the Python bench, default
# ../shared/bench/peer_redsync_bench.py), OUT (default target/bench-results),
# LOW_LATENCY=1: hold /dev/cpu_dma_latency at 0 for the run (needs root), so that idle
# CPUs poll instead of halting. On this VM (cpuidle driver haltpoll) that takes the loopback
# round trip from ~55-80 us to ~15-25 us; the setting is released when the run ends.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-5}
LOW_LATENCY=${LOW_LATENCY:-0}
REPEAT=${REPEAT:-5}
PY_OPS=${PY_OPS:-20000}
ROUNDS=${ROUNDS:-2000}
WAITERS=${WAITERS:-10000}
RUNTIMES=${RUNTIMES:-tokio smol}
PEER=${PEER:-../shared/bench/peer_redsync_bench.py}
OUT=${OUT:-target/bench-results}
mkdir -p "$OUT"
LOG="$OUT/bench-$(date -u +%Y%m%dT%H%M%SZ).log"
exec > >(tee "$LOG") 2>&1

say() { printf '\n== %s\n' "$*"; }
# kv LINE KEY: the value of KEY=value in LINE.
kv() { { printf ' %s\n' "$1" | grep -o " $2=[^ ]*" || true; } | tail -n 1 | cut -d= -f2; }
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }
yesno() { awk "BEGIN { print (($1) ? \"yes\" : \"NO\") }"; }
# median of the arguments
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# p50 in microseconds from a redis-benchmark -q line
p50_us() { sed 's/.*p50=\([0-9.]*\) msec.*/\1/' | awk '{ printf "%.0f", $1 * 1000 }'; }

say "machine"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "cpu:     $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "kernel:  $(uname -sr)"
echo "redis:   $(redis-server --version)"
echo "rustc:   $(rustc --version)"
echo "python:  $(python3 --version 2>&1)"
echo "cpuidle: $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo unknown)"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, before the run)"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD 2>/dev/null || echo ' (plus uncommitted changes)')"

say "build"
cargo build --release --example loadgen --all-features
LOADGEN=target/release/examples/loadgen

say "redis-server"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DIR=$(mktemp -d)
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" \
  --loglevel warning --maxclients 20000 >"$DIR/redis.log" 2>&1 &
RPID=$!
QOS=""
cleanup() {
  redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || kill "$RPID" 2>/dev/null || true
  wait "$RPID" 2>/dev/null || true
  if [ -n "$QOS" ]; then kill "$QOS" 2>/dev/null || true; fi
  rm -rf "$DIR"
}
trap cleanup EXIT
if [ "$LOW_LATENCY" = 1 ]; then
  python3 -c 'import os, signal, struct
fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
os.write(fd, struct.pack("i", 0))
signal.pause()' &
  QOS=$!
  sleep 0.5
  if kill -0 "$QOS" 2>/dev/null; then
    echo "LOW_LATENCY=1: /dev/cpu_dma_latency held at 0 by pid $QOS for this run"
  else
    echo "LOW_LATENCY=1: could not hold /dev/cpu_dma_latency (not root?); running with the defaults"
    QOS=""
  fi
else
  echo "LOW_LATENCY=0: CPU idle states as configured (cpu_dma_latency not held)"
fi
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
export REDIS_URL="redis://127.0.0.1:$PORT/"
echo "REDIS_URL=$REDIS_URL (pid $RPID, fresh, no persistence)"

say "redis-benchmark (the physical limit)"
rb() {
  echo "\$ redis-benchmark -p PORT -q $*"
  redis-benchmark -p "$PORT" -q "$@" 2>&1 | tr '\r' '\n' | grep 'requests per second'
}
RB1=$(rb -n 100000 -c 1 -t ping,lpush,lpop); echo "$RB1"
rb -n 300000 -c 50 -t ping,lpush,lpop
rb -n 1000000 -c 50 -P 16 -t ping,lpush,lpop
RTT_US=$(printf '%s\n' "$RB1" | grep '^ *PING_MBULK' | p50_us)
echo "round trip (redis-benchmark -c 1 PING_MBULK p50): ${RTT_US} us"
rtt_now() {
  redis-benchmark -p "$PORT" -q -n 50000 -c 1 -t ping 2>&1 | tr '\r' '\n' |
    grep 'requests per second' | grep '^ *PING_MBULK' | p50_us
}

PY=""
if [ -x .venv-peer/bin/python ] && .venv-peer/bin/python -c 'import redsync, redis' 2>/dev/null; then
  PY=.venv-peer/bin/python
elif python3 -m venv .venv-peer >/dev/null 2>&1 && .venv-peer/bin/pip install -q redsync==2.0.0 redis; then
  PY=.venv-peer/bin/python
else
  echo "(python reference skipped: could not set up .venv-peer with redsync==2.0.0)"
fi

declare -A R V RTT
PY_SEQ=(); PY_CONC=()
peer() {
  echo "\$ .venv-peer/bin/python $PEER \$REDIS_URL $PY_OPS"
  local out
  out=$("$PY" "$PEER" "$REDIS_URL" "$PY_OPS")
  echo "$out"
  PY_SEQ+=("$(printf '%s\n' "$out" | grep sequential | grep -o '[0-9]* ops/s' | cut -d' ' -f1)")
  PY_CONC+=("$(printf '%s\n' "$out" | grep '64 tasks' | grep -o '[0-9]* ops/s' | cut -d' ' -f1)")
}
# loadgen KEY ARGS...: runs it, keeps its last line in R[KEY] and appends ops_per_sec to V[KEY].
loadgen() {
  local key=$1; shift
  echo "\$ $LOADGEN $*"
  local out
  out=$("$LOADGEN" "$@")
  echo "$out"
  R[$key]=$(printf '%s\n' "$out" | tail -n 1)
  V[$key]="${V[$key]:-} $(kv "${R[$key]}" ops_per_sec)"
  return 0
}

for round in $(seq "$REPEAT"); do
  say "round $round of $REPEAT"
  if [ -n "$PY" ]; then peer; fi
  for rt in $RUNTIMES; do
    loadgen "$rt.seq" --runtime "$rt" --tasks 1 --count 1 --secs "$SECS"
    loadgen "$rt.conc" --runtime "$rt" --tasks 64 --count 8 --secs "$SECS"
  done
done

for rt in $RUNTIMES; do
  say "once on $rt: 64 handles, release by drop, handoff, waiters"
  loadgen "$rt.conc64" --runtime "$rt" --tasks 64 --count 8 --handles 64 --secs "$SECS"
  loadgen "$rt.seqdrop" --runtime "$rt" --tasks 1 --count 1 --release drop --secs "$SECS"
  # The round trip again, right before the handoff it is compared with.
  RTT[$rt]=$(rtt_now)
  echo "round trip now (redis-benchmark -n 50000 -c 1 -t ping, PING_MBULK p50): ${RTT[$rt]} us"
  loadgen "$rt.handoff" --runtime "$rt" --mode handoff --rounds "$ROUNDS"
  loadgen "$rt.waiters" --runtime "$rt" --mode waiters --tasks "$WAITERS"
done
echo
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, after the run)"

say "results (ratios against baselines measured in this run)"
PSEQ=""; PCONC=""
if [ -n "$PY" ]; then
  PSEQ=$(median "${PY_SEQ[@]}")
  PCONC=$(median "${PY_CONC[@]}")
  echo "python reference, median of $REPEAT rounds: sequential $PSEQ ops/s (${PY_SEQ[*]}), 64 tasks $PCONC ops/s (${PY_CONC[*]})"
fi
# paired KEY PYVALUES...: the ratio of each round's loadgen figure to that round's reference.
paired() {
  local -a mine
  read -r -a mine <<<"${V[$1]}"
  shift
  local i out=""
  for i in "${!mine[@]}"; do out="$out $(calc "${mine[$i]} / ${*:$((i + 1)):1}")"; done
  echo "$out"
}
for rt in $RUNTIMES; do
  echo "redis-sync $rt, per round: 1 task${V[$rt.seq]} ops/s; 64 tasks${V[$rt.conc]} ops/s"
  if [ -n "$PY" ]; then
    echo "  ratio to the reference of the same round: 1 task$(paired "$rt.seq" "${PY_SEQ[@]}"); 64 tasks$(paired "$rt.conc" "${PY_CONC[@]}")"
  fi
done
echo "round trip (redis-benchmark PING p50): ${RTT_US} us at the start; $(for rt in $RUNTIMES; do printf '%s us before the %s handoff; ' "${RTT[$rt]}" "$rt"; done)"
echo
fmt="| %-38s | %-56s | %-34s | %-14s | %-6s |\n"
printf "$fmt" "scenario" "redis-sync" "baseline" "ratio" "met"
printf "$fmt" "---" "---" "---" "---" "---"
for rt in $RUNTIMES; do
  for k in seq seqdrop conc conc64; do
    line=${R[$rt.$k]}
    case $k in
      seq) name="1 task, count 1"; base=$PSEQ; target=2 ;;
      seqdrop) name="1 task, count 1, drop(permit)"; base=$PSEQ; target="" ;;
      conc) name="64 tasks, count 8, 1 handle"; base=$PCONC; target=20 ;;
      conc64) name="64 tasks, count 8, 64 handles"; base=$PCONC; target="" ;;
    esac
    if [ "$k" = conc64 ] || [ "$k" = seqdrop ]; then
      ops=$(kv "$line" ops_per_sec)
      what="$ops ops/s (1 run), p50 $(kv "$line" p50_us) us, $(kv "$line" connections) conns"
    else
      # shellcheck disable=SC2086
      ops=$(median ${V[$rt.$k]})
      what="$ops ops/s (median), last run: p50 $(kv "$line" p50_us) us, p99 $(kv "$line" p99_us) us, $(kv "$line" connections) conns"
    fi
    if [ -n "$base" ]; then
      met="(info)"
      [ -n "$target" ] && met=$(yesno "$ops / $base >= $target")
      printf "$fmt" "$name ($rt)" "$what" "redsync $base ops/s" "$(calc "$ops / $base")x" "$met"
    else
      printf "$fmt" "$name ($rt)" "$what" "(no python reference)" "-" "-"
    fi
  done
  line=${R[$rt.handoff]}
  p50=$(kv "$line" p50_us)
  printf "$fmt" "handoff p50, 2 handles ($rt)" "$p50 us (p90 $(kv "$line" p90_us) us, p99 $(kv "$line" p99_us) us)" \
    "RTT ${RTT[$rt]} us (redis-benchmark)" "$(calc "$p50 / ${RTT[$rt]}") RTT" "$(yesno "$p50 / ${RTT[$rt]} <= 3")"
  printf "$fmt" "" "" "RTT $(kv "$line" rtt_p50_us) us (redis-rs PING, $rt)" "$(kv "$line" p50_in_rtts) RTT" \
    "$(yesno "$(kv "$line" p50_in_rtts) <= 3")"
  line=${R[$rt.waiters]}
  printf "$fmt" "$WAITERS waiters ($rt)" \
    "$(kv "$line" connections) conns, VmHWM $(kv "$line" vm_hwm_kb) KiB, served $(kv "$line" served)" \
    "fifo $(kv "$line" fifo), unserved live $(kv "$line" live_unserved)" \
    "free+held $(($(kv "$line" free) + $(kv "$line" held)))/$(kv "$line" count)" \
    "$([ "$(kv "$line" ok)" = true ] && [ "$(kv "$line" connections)" -le 8 ] && echo yes || echo NO)"
done
echo
echo "full log: $LOG"
