#!/usr/bin/env bash
# Compare the hot path of two versions of redis-sync, OLD and NEW, with examples/loadgen.rs,
# in one run, on one redis-server, interleaved so that both see the same (shared, noisy)
# machine. Prints a Markdown table: per scenario the median of OLD and NEW over the rounds,
# the ratio NEW/OLD and the spread of the per-round ratios.
#
#   scripts/bench-compare.sh OLD NEW
#   scripts/bench-compare.sh 6043e26 main
#   scripts/bench-compare.sh /path/to/old-worktree /path/to/new-worktree
#
# OLD and NEW are each a directory holding a checkout of this crate (used as it is, even
# with uncommitted changes, which the output then says), or a commit-ish of the repository
# this script lives in, checked out with `git worktree add --detach` into
# $BENCH_DIR/old and $BENCH_DIR/new (reused when already there at that commit). Each tree
# builds in its own target dir: `cargo build --release --example loadgen --features smol`.
#
# Then: one fresh redis-server (no persistence) on a free port; REPEAT rounds; in each round
# every scenario runs OLD then NEW, or NEW then OLD (the order alternates from round to
# round), after a FLUSHALL, with REDIS_URL pointing at that server. Scenarios:
#   tokio  --tasks 1 --count 1                    (release().await)
#   tokio  --tasks 1 --count 1 --release drop
#   tokio  --tasks 64 --count 8                   (one handle)
#   tokio  --mode handoff --rounds $ROUNDS        (latency: lower is better)
#   smol   --tasks 1 --count 1
#   smol   --tasks 64 --count 8
# Cycle runs: the last `loadgen: ops_per_sec=.. p50_us=.. p99_us=.. connections=..` line.
# Handoff: its `handoff: ... p50_us=.. p99_us=..` line, plus, as a control measured by the
# same process, the plain redis-rs handoff and PING round trip (the same code in both
# versions: their OLD/NEW ratio shows what noise alone does).
#
# Environment: SECS (each cycle run, default 5), REPEAT (rounds, default 5), ROUNDS (handoff
# samples, default 2000), BENCH_DIR (where commit-ish arguments are checked out, default
# target/bench-compare of this repository), OUT (raw results and log, default
# $BENCH_DIR/results), SCENARIOS (a subset of the scenario names: tokio-1x1-await tokio-1x1-drop tokio-64x8
# tokio-handoff smol-1x1-await smol-64x8, space separated; default
# all), SKIP_BUILD=1 (use the binaries already built).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$SCRIPT_DIR/.." rev-parse --show-toplevel)

if [ $# -ne 2 ]; then
  sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi

SECS=${SECS:-5}
REPEAT=${REPEAT:-5}
ROUNDS=${ROUNDS:-2000}
BENCH_DIR=${BENCH_DIR:-$REPO/target/bench-compare}
OUT=${OUT:-$BENCH_DIR/results}
ALL_SCENARIOS="tokio-1x1-await tokio-1x1-drop tokio-64x8 tokio-handoff smol-1x1-await smol-64x8"
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
unset CARGO_TARGET_DIR

mkdir -p "$BENCH_DIR" "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOG="$OUT/compare-$STAMP.log"
RAW="$OUT/compare-$STAMP.tsv"
exec > >(tee "$LOG") 2>&1

say() { printf '\n== %s\n' "$*"; }
# kv LINE KEY: the value of KEY=value in LINE.
kv() { { printf ' %s\n' "$1" | grep -o " $2=[^ ]*" || true; } | tail -n 1 | cut -d= -f2; }
# median of the arguments
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
minmax() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo, hi }'; }
ratio() { awk -v n="$1" -v o="$2" 'BEGIN { if (o + 0 == 0) print "nan"; else printf "%.3f", n / o }'; }
fmt0() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
fmt1() { awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }

# tree ARG SLOT: a directory with the crate for ARG (a directory, or a commit-ish checked out
# into $BENCH_DIR/SLOT).
tree() {
  local arg=$1 slot=$2
  if [ -d "$arg" ] && [ -f "$arg/Cargo.toml" ]; then
    (cd "$arg" && pwd)
    return
  fi
  local sha dir=$BENCH_DIR/$slot
  sha=$(git -C "$REPO" rev-parse --verify "$arg^{commit}")
  if [ -d "$dir" ]; then
    if [ "$(git -C "$dir" rev-parse HEAD 2>/dev/null)" != "$sha" ]; then
      echo "error: $dir exists and is not a checkout of $sha; remove it or set BENCH_DIR" >&2
      exit 1
    fi
  else
    git -C "$REPO" worktree add --detach "$dir" "$sha" >&2
  fi
  (cd "$dir" && pwd)
}
describe() {
  local d=$1
  printf '%s' "$(git -C "$d" rev-parse HEAD 2>/dev/null || echo 'not a git checkout')"
  git -C "$d" diff --quiet HEAD 2>/dev/null || printf ' (plus uncommitted changes)'
}

OLD_DIR=$(tree "$1" old)
NEW_DIR=$(tree "$2" new)
OLD_DESC=$(describe "$OLD_DIR")
NEW_DESC=$(describe "$NEW_DIR")

say "machine"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "cpu:     $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "kernel:  $(uname -sr)"
echo "redis:   $(redis-server --version)"
echo "rustc:   $(rustc --version)"
echo "OLD:     $OLD_DIR @ $OLD_DESC"
echo "NEW:     $NEW_DIR @ $NEW_DESC"
echo "plan:    REPEAT=$REPEAT SECS=$SECS ROUNDS=$ROUNDS scenarios: $SCENARIOS"

say "build"
for d in "$OLD_DIR" "$NEW_DIR"; do
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "\$ (cd $d && cargo build --release --example loadgen --features smol)"
    (cd "$d" && cargo build --release --example loadgen --features smol)
  fi
  test -x "$d/target/release/examples/loadgen" || { echo "error: no $d/target/release/examples/loadgen" >&2; exit 1; }
done
OLD_BIN=$OLD_DIR/target/release/examples/loadgen
NEW_BIN=$NEW_DIR/target/release/examples/loadgen

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
echo "REDIS_URL=$REDIS_URL (pid $(cat "$RDIR/redis.pid"), fresh, no persistence)"
RB=$(redis-benchmark -p "$PORT" -q -n 50000 -c 1 -t ping 2>&1 | tr '\r' '\n' | grep 'requests per second' | grep PING_MBULK || true)
echo "redis-benchmark -c 1 PING_MBULK at the start: $RB"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load before: $LOAD_BEFORE"

args_of() {
  case $1 in
    tokio-1x1-await) echo "--runtime tokio --tasks 1 --count 1 --secs $SECS" ;;
    tokio-1x1-drop) echo "--runtime tokio --tasks 1 --count 1 --release drop --secs $SECS" ;;
    tokio-64x8) echo "--runtime tokio --tasks 64 --count 8 --secs $SECS" ;;
    tokio-handoff) echo "--runtime tokio --mode handoff --rounds $ROUNDS" ;;
    smol-1x1-await) echo "--runtime smol --tasks 1 --count 1 --secs $SECS" ;;
    smol-64x8) echo "--runtime smol --tasks 64 --count 8 --secs $SECS" ;;
    *) echo "unknown scenario $1" >&2; exit 1 ;;
  esac
}
label_of() {
  case $1 in
    tokio-1x1-await) echo '1 task, count 1, `release().await`, tokio' ;;
    tokio-1x1-drop) echo '1 task, count 1, release by `drop`, tokio' ;;
    tokio-64x8) echo '64 tasks, count 8, 1 handle, tokio' ;;
    tokio-handoff) echo 'handoff between 2 handles, tokio (latency)' ;;
    smol-1x1-await) echo '1 task, count 1, `release().await`, smol' ;;
    smol-64x8) echo '64 tasks, count 8, 1 handle, smol' ;;
  esac
}

# CPU time (user + sys) of each loadgen process, from GNU time when installed: CPU per
# operation moves much less than throughput when other jobs take CPU from the run.
TIMECMD=()
if [ -x /usr/bin/time ] && /usr/bin/time -f 'cpu_time: user=%U sys=%S' true 2>/dev/null; then
  TIMECMD=(/usr/bin/time -f 'cpu_time: user=%U sys=%S')
fi

# Raw results: round scenario version metric1 metric2 ... as key=value.
printf 'round\tscenario\tversion\tfields\n' >"$RAW"

run_one() { # round scenario version
  local r=$1 s=$2 v=$3 bin out last fields
  if [ "$v" = OLD ]; then bin=$OLD_BIN; else bin=$NEW_BIN; fi
  redis-cli -p "$PORT" flushall >/dev/null
  # shellcheck disable=SC2046
  out=$(timeout 300 "${TIMECMD[@]}" "$bin" $(args_of "$s") 2>&1) || { echo "$out"; echo "error: $v $s failed" >&2; exit 1; }
  local cpu_line cpu_s=
  cpu_line=$(printf '%s\n' "$out" | grep '^cpu_time:' | tail -n 1 || true)
  [ -n "$cpu_line" ] && cpu_s=$(awk -v u="$(kv "$cpu_line" user)" -v y="$(kv "$cpu_line" sys)" 'BEGIN { printf "%.3f", u + y }')
  if [ "$s" = tokio-handoff ]; then
    last=$(printf '%s\n' "$out" | grep '^handoff:' | tail -n 1)
    local raw ping
    raw=$(printf '%s\n' "$out" | grep '^loadgen: raw_redis_rs_handoff' | tail -n 1)
    ping=$(printf '%s\n' "$out" | grep '^loadgen: ping_rtt_p50_us' | tail -n 1)
    fields="p50_us=$(kv "$last" p50_us) p90_us=$(kv "$last" p90_us) p99_us=$(kv "$last" p99_us) raw_p50_us=$(kv "$raw" raw_redis_rs_handoff_p50_us) ping_p50_us=$(kv "$ping" ping_rtt_p50_us)"
  else
    last=$(printf '%s\n' "$out" | grep '^loadgen: ops_per_sec=' | tail -n 1)
    local cmds
    cmds=$(printf '%s\n' "$out" | grep '^loadgen: server commands per cycle' | tail -n 1)
    local opsl ops cpu_op=
    opsl=$(printf '%s\n' "$out" | grep '^loadgen: ops=' | tail -n 1)
    ops=$(kv "$opsl" ops)
    [ -n "$cpu_s" ] && [ -n "$ops" ] && cpu_op=$(awk -v c="$cpu_s" -v n="$ops" 'BEGIN { if (n > 0) printf "%.3f", c * 1e6 / n }')
    fields="ops_per_sec=$(kv "$last" ops_per_sec) p50_us=$(kv "$last" p50_us) p99_us=$(kv "$last" p99_us) connections=$(kv "$last" connections) evalsha=$(kv "$cmds" evalsha) blmove=$(kv "$cmds" blmove) cpu_s=$cpu_s cpu_us_per_op=$cpu_op"
  fi
  [ -n "$last" ] || { echo "$out"; echo "error: no result line from $v $s" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\n' "$r" "$s" "$v" "$fields" >>"$RAW"
  printf 'round %s %-16s %s  %s\n' "$r" "$s" "$v" "$fields"
}

say "runs (log: $LOG, raw: $RAW)"
T0=$(date +%s)
for r in $(seq "$REPEAT"); do
  if [ $((r % 2)) = 1 ]; then order="OLD NEW"; else order="NEW OLD"; fi
  echo "-- round $r/$REPEAT (order: $order; load $(cut -d' ' -f1-3 /proc/loadavg))"
  for s in $SCENARIOS; do
    for v in $order; do run_one "$r" "$s" "$v"; done
  done
done
T1=$(date +%s)
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
RB2=$(redis-benchmark -p "$PORT" -q -n 50000 -c 1 -t ping 2>&1 | tr '\r' '\n' | grep 'requests per second' | grep PING_MBULK || true)
echo "redis-benchmark -c 1 PING_MBULK at the end: $RB2"
echo "load after: $LOAD_AFTER; runs took $((T1 - T0)) s"

# vals SCENARIO VERSION KEY: the values of KEY, in round order.
vals() {
  awk -F'\t' -v s="$1" -v v="$2" '$2 == s && $3 == v { print $1 "\t" $4 }' "$RAW" | sort -n |
    while IFS=$'\t' read -r _ f; do kv "$f" "$3"; done
}
# per-round ratios NEW/OLD of KEY
rratios() {
  paste <(vals "$1" NEW "$2") <(vals "$1" OLD "$2") | awk '{ if ($2 + 0 == 0) print "nan"; else printf "%.2f\n", $1 / $2 }'
}

say "results"
echo
echo "OLD = \`$OLD_DESC\`, NEW = \`$NEW_DESC\`; $REPEAT rounds, OLD/NEW interleaved (order alternating), ${SECS} s per cycle run, one redis-server; load before $LOAD_BEFORE, after $LOAD_AFTER."
CYCLE_SCENARIOS=$(printf '%s\n' $SCENARIOS | grep -vx tokio-handoff || true)
if [ -n "$CYCLE_SCENARIOS" ]; then
echo
echo "| scenario | OLD ops/s (median) | NEW ops/s (median) | NEW/OLD | per-round ratios (min-max) | p99 µs OLD / NEW (median) | p99 NEW/OLD | p50 µs OLD / NEW | CPU µs/op OLD / NEW (median) | CPU/op NEW/OLD (per-round min-max) | connections OLD / NEW | evalsha+blmove per cycle OLD / NEW |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for s in $CYCLE_SCENARIOS; do
  mapfile -t o < <(vals "$s" OLD ops_per_sec); mapfile -t n < <(vals "$s" NEW ops_per_sec)
  mapfile -t rr < <(rratios "$s" ops_per_sec)
  mo=$(median "${o[@]}"); mn=$(median "${n[@]}")
  p99o=$(median $(vals "$s" OLD p99_us)); p99n=$(median $(vals "$s" NEW p99_us))
  p50o=$(median $(vals "$s" OLD p50_us)); p50n=$(median $(vals "$s" NEW p50_us))
  co=$(median $(vals "$s" OLD connections)); cn=$(median $(vals "$s" NEW connections))
  eo=$(median $(vals "$s" OLD evalsha)); en=$(median $(vals "$s" NEW evalsha))
  bo=$(median $(vals "$s" OLD blmove)); bn=$(median $(vals "$s" NEW blmove))
  cpo=$(median $(vals "$s" OLD cpu_us_per_op)); cpn=$(median $(vals "$s" NEW cpu_us_per_op))
  if [ "$cpo" = nan ]; then cpu_cells="n/a | n/a"; else
    mapfile -t cr < <(rratios "$s" cpu_us_per_op)
    cpu_cells="$(awk -v x="$cpo" 'BEGIN { printf "%.2f", x }') / $(awk -v x="$cpn" 'BEGIN { printf "%.2f", x }') | $(ratio "$cpn" "$cpo") ($(minmax "${cr[@]}"))"
  fi
  echo "| $(label_of "$s") | $(fmt0 "$mo") | $(fmt0 "$mn") | **$(ratio "$mn" "$mo")** | $(minmax "${rr[@]}") (${rr[*]}) | $(fmt1 "$p99o") / $(fmt1 "$p99n") | $(ratio "$p99n" "$p99o") | $(fmt1 "$p50o") / $(fmt1 "$p50n") | $cpu_cells | $(fmt0 "$co") / $(fmt0 "$cn") | $eo+$bo / $en+$bn |"
done
fi
if [[ " $SCENARIOS " == *" tokio-handoff "* ]]; then
  s=tokio-handoff
  echo
  echo "Handoff (latency, lower is better; NEW/OLD > 1 means NEW is slower). Controls from the same processes: the plain redis-rs handoff and PING round trip, identical code in both versions."
  echo
  echo "| metric | OLD (median) | NEW (median) | NEW/OLD | per-round ratios (min-max) |"
  echo "| --- | --- | --- | --- | --- |"
  for k in p50_us p90_us p99_us raw_p50_us ping_p50_us; do
    mapfile -t rr < <(rratios "$s" "$k")
    mo=$(median $(vals "$s" OLD "$k")); mn=$(median $(vals "$s" NEW "$k"))
    case $k in
      p50_us) name='handoff p50 µs' ;; p90_us) name='handoff p90 µs' ;; p99_us) name='handoff p99 µs' ;;
      raw_p50_us) name='control: plain redis-rs handoff p50 µs' ;; ping_p50_us) name='control: PING RTT p50 µs' ;;
    esac
    echo "| $name | $(fmt1 "$mo") | $(fmt1 "$mn") | **$(ratio "$mn" "$mo")** | $(minmax "${rr[@]}") (${rr[*]}) |"
  done
fi
echo
echo "Per-round values are in $RAW."
