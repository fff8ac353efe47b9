#!/usr/bin/env bash
# What our rate-limit scripts cost Redis's one thread per call, against throttle-kit's, by Redis's
# own accounting (`INFO commandstats`, `usec_per_call` of `EVALSHA`, after `CONFIG RESETSTAT`).
#
#   benches/redis_script_cost.sh            # 6 rounds; rows single, two, tk
#   RUNS=10 ROWS="single two" benches/redis_script_cost.sh
#   GCRA_LUA=/tmp/old.lua benches/redis_script_cost.sh   # a given script instead of the build's
#   CALLGRIND=1 ROWS="single tk" benches/redis_script_cost.sh   # instructions, not times (below)
#   BEFORE_LUA=/tmp/old.lua ROWS="single single:before two two:before tk" benches/redis_script_cost.sh
#       # before and after in one session, alternating: a row ending in ":before" runs BEFORE_LUA
#       # (e.g. main's script: `git stash; cargo run -q --all-features --example
#       # redis_script_source > /tmp/old.lua`)
#
# It starts a private redis-server on a free loopback port (never the one on 6379), loads the GCRA
# script exactly as the crate builds it (`cargo run --example redis_script_source`) and
# throttle-kit's GCRA script (from its source in ~/.cargo/registry), then, round after round with
# the rows alternating, runs `redis-benchmark -c $CLIENTS -n $CALLS EVALSHA ...` for each and reads
# `usec_per_call` (and redis-benchmark's calls per second). Each row's keys (`-r $KEYS`: 64 by
# default, as the criterion group's 64 in flight) are warmed first, so every measured call reads a
# state and writes one back, as a limiter's steady state does. Prints every round's figure and the minimum per row.
#
# Rows (the arguments are the criterion group's `redis_rate_limit`, benches/redis.rs, but for the
# quota: a GCRA emission interval of 1 ms (EMISSION, ns) with a burst of an hour (TOLERANCE, ns),
# so every call is an admission made by Redis on a state that is there to read, as on a busy key;
# the criterion group's 838 ns leaves a state that expires within a millisecond, so most calls
# there find no state at all. EMISSION=838 TOLERANCE=3599999999210 gives its quota):
#   single  the single form (the layer's own limit: a bare value)
#   two     the set form with two limits, "a" and "b" (`.limits([a, b])`: both states packed in
#           the key's one value)
#   own2    the set form with the layer's own limit and one more ("" and "b")
#   tk      throttle-kit 2.1's script (`RateLimitBackend::check`'s arguments: 1 ms, burst u32::MAX)
#   batch16 the single form's decisions 16 to a call of the batch form (the script as the crate
#           builds it, `redis_script_source -- gcra batch`), as the store sends decisions made at
#           once (each after the first as "=" and its deadline); its figures are per call, of 16
#           decisions
#
# CALLGRIND=1 counts instructions instead, which the machine's load does not move: the server runs
# under `valgrind --tool=callgrind`, counting only inside `evalGenericCommand` (a script's whole
# run, the commands it calls included); for each row, after its keys are warmed, the counters are
# zeroed, $CALLGRIND_CALLS calls made (2,000 by default) and the count dumped, one round. Needs
# valgrind and a redis-server whose `evalGenericCommand` symbol is exported (Debian's is).
set -euo pipefail

RUNS=${RUNS:-6}
CLIENTS=${CLIENTS:-16}
CALLS=${CALLS:-20000}
KEYS=${KEYS:-64}
ROWS=${ROWS:-"single two tk"}

here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

if [ -n "${GCRA_LUA:-}" ]; then
  cp "$GCRA_LUA" "$tmp/gcra.lua"
else
  (cd "$here" && cargo run -q --all-features --example redis_script_source -- gcra) > "$tmp/gcra.lua"
fi
(cd "$here" && cargo run -q --all-features --example redis_script_source -- gcra batch) > "$tmp/batch.lua"
tk_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/throttle-kit-*/src/redis.rs | sort -V | tail -1)
sed -n '/^const GCRA_SCRIPT: &str = r#"$/,/^"#;$/p' "$tk_src" | sed '1d;$d' > "$tmp/tk.lua"
[ -s "$tmp/tk.lua" ] || { echo "throttle-kit's script not found in $tk_src" >&2; exit 1; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# NICE=-10 (as root) runs the server and the client ahead of other jobs on a shared machine: fewer
# calls stretched by preemption, which `usec_per_call` (wall time) counts.
if [ -n "${CALLGRIND:-}" ]; then
  valgrind --tool=callgrind --collect-atstart=no --toggle-collect=evalGenericCommand \
    --callgrind-out-file="$tmp/cg.out" --log-file="$tmp/valgrind.log" \
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
    --logfile "$tmp/redis.log" &
  server_pid=$!
  # Under valgrind the server takes seconds to start.
  for _ in $(seq 300); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
else
  nice -n "${NICE:-0}" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
    --logfile "$tmp/redis.log" &
  server_pid=$!
fi
cli() { redis-cli -p "$port" "$@"; }
for _ in $(seq 50); do cli PING >/dev/null 2>&1 && break; sleep 0.1; done
cli PING >/dev/null

sha=$(cli -x SCRIPT LOAD < "$tmp/gcra.lua")
tk_sha=$(cli -x SCRIPT LOAD < "$tmp/tk.lua")
batch_sha=$(cli -x SCRIPT LOAD < "$tmp/batch.lua")
sha_before=
if [ -n "${BEFORE_LUA:-}" ]; then sha_before=$(cli -x SCRIPT LOAD < "$BEFORE_LUA"); fi

emission=${EMISSION:-1000000}
tolerance=${TOLERANCE:-3600000000000}
far=9007199254740991
now_ms=$(($(date +%s) * 1000))

args() {
  local sha=$sha
  if [ "${1%:before}" != "$1" ]; then
    [ -n "$sha_before" ] || { echo "row $1 needs BEFORE_LUA" >&2; exit 2; }
    sha=$sha_before
  fi
  case ${1%:before} in
    single) echo "$sha 1 bench:$1:s:__rand_int__ $emission $tolerance '' 0 1 $far" ;;
    two) echo "$sha 1 bench:$1:t:__rand_int__ $emission $tolerance '' 0 1 1 000 a b $emission $tolerance $far" ;;
    own2) echo "$sha 1 bench:$1:o:__rand_int__ $emission $tolerance '' 0 1 1 000 '' b $emission $tolerance $far" ;;
    tk) echo "$tk_sha 1 tk:__rand_int__ 1 4294967295 1 $now_ms 4294967295" ;;
    batch16)
      local keys='' args='' i
      for i in $(seq 16); do
        keys="$keys bench:$1:b$i:__rand_int__"
        # As the store sends them: the first decision's arguments whole, the others' as "=" and
        # their deadline (BATCH_ARGS=whole sends each whole, as before the "=" form).
        if [ "$i" = 1 ] || [ "${BATCH_ARGS:-}" = whole ]; then
          args="$args 6 $emission $tolerance '' 0 1 $far"
        else
          args="$args = $far"
        fi
      done
      # BEFORE_LUA is then a batch form too.
      if [ "${1%:before}" = "$1" ]; then sha=$batch_sha; fi
      echo "$sha 16$keys$args" ;;
    *) echo "unknown row $1" >&2; exit 2 ;;
  esac
}

run() { # row calls; prints redis-benchmark's requests per second
  local row=$1 calls=$2
  local -a a
  eval "a=($(args "$row"))"
  nice -n "${NICE:-0}" redis-benchmark -p "$port" -c "$CLIENTS" -n "$calls" -r "$KEYS" -q EVALSHA "${a[@]}" |
    tr '\r' '\n' | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -1
}

# Check each row answers an admission, then warm its keys.
for row in $ROWS; do
  eval "a=($(args "$row"))"
  a[2]=${a[2]/__rand_int__/check}
  reply=$(cli EVALSHA "${a[@]}" | head -1)
  if [ "$reply" != 1 ]; then
    echo "row $row: the script did not admit (first reply field: $reply)" >&2
    cli EVALSHA "${a[@]}" >&2
    exit 1
  fi
  run "$row" $((KEYS * 20)) >/dev/null
done

if [ -n "${CALLGRIND:-}" ]; then
  calls=${CALLGRIND_CALLS:-2000}
  echo "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), under callgrind: instructions per EVALSHA"
  echo "inside evalGenericCommand, $calls calls a row, -c $CLIENTS, $KEYS keys"
  dump=0
  for row in $ROWS; do
    callgrind_control -z "$server_pid" >/dev/null 2>&1
    run "$row" "$calls" >/dev/null
    callgrind_control -d "$server_pid" >/dev/null 2>&1
    dump=$((dump + 1))
    total=$(sed -n 's/^summary: //p' "$tmp/cg.out.$dump")
    printf '%-14s %8d instructions/call\n' "$row" $((total / calls))
  done
  exit 0
fi

declare -A best all top
for r in $(seq "$RUNS"); do
  for row in $ROWS; do
    cli CONFIG RESETSTAT >/dev/null
    rps=$(run "$row" "$CALLS")
    if [ -z "${top[$row]:-}" ] || awk "BEGIN { exit !($rps > ${top[$row]}) }"; then
      top[$row]=$rps
    fi
    us=$(cli INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:.*usec_per_call=\([0-9.]*\).*/\1/p')
    all[$row]="${all[$row]:-}${all[$row]:+ }$us"
    if [ -z "${best[$row]:-}" ] || awk "BEGIN { exit !($us < ${best[$row]}) }"; then
      best[$row]=$us
    fi
  done
done

echo "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), $RUNS rounds of $CALLS calls, -c $CLIENTS, $KEYS keys"
echo "usec_per_call of EVALSHA (Redis's accounting, the script's run), min and every round; the best"
echo "round's calls/s by redis-benchmark (client on the same machine: a rough figure)"
for row in $ROWS; do
  printf '%-14s min %6s us  %9s calls/s   all: %s\n' "$row" "${best[$row]}" "${top[$row]}" "${all[$row]}"
done
