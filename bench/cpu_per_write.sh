#!/usr/bin/env bash
# CPU time per acknowledged write: a 3-node cairn cluster (one shard, clients at its leader,
# release build) and redis-server with appendfsync always, each driven by bench/kvload (50
# clients, SET, SECS seconds) on this machine. Reads each server process's user+system CPU
# time from /proc before and after the load, and prints CPU microseconds per SET, the share
# of the machine's cores the servers used, and what that cost per write allows at most on
# this machine's cores (cores / CPU per write), so a throughput target can be checked against
# the CPU it needs.
#
#   bash bench/cpu_per_write.sh          # SECS=10
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-17901}
REDIS_PORT=${REDIS_PORT:-17999}
SECS=${SECS:-10}
command -v redis-server >/dev/null || { echo "bench: redis-server is needed (apt-get install redis-server)"; exit 1; }
cargo build --release -q -p cairn
cargo build --release -q --manifest-path bench/kvload/Cargo.toml --target-dir target
source bench/lib.sh
cores=$(nproc)
tck=$(getconf CLK_TCK)
cpu_ticks() { # pids... → summed utime + stime in clock ticks
  local sum=0 p
  for p in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' /proc/"$p"/stat))); done
  echo "$sum"
}
measure() { # name port pids...
  local name=$1 port=$2; shift 2
  local before after out ops
  before=$(cpu_ticks "$@")
  out=$(./target/release/kvload --proto resp --port "$port" --clients 50 --keys 100000 --op set --secs "$SECS")
  after=$(cpu_ticks "$@")
  ops=$(echo "$out" | cut -d, -f2)
  awk -v n="$name" -v ops="$ops" -v t=$((after - before)) -v tck="$tck" -v secs="$SECS" -v cores="$cores" 'BEGIN {
    cpu = t / tck; writes = ops * secs; us = cpu * 1e6 / writes
    printf "%s,%d,%.1f,%.2f,%.0f\n", n, ops, us, cpu / secs, cores * 1e6 / us }'
}
start_cairn3 "$BASE"
start_redis_always "$REDIS_PORT"
echo "system,SET ops/s,server CPU us per SET,server cores busy,SET/s this CPU cost allows on $cores cores"
measure cairn-3-nodes "$leader" "${cairn[@]}"
measure redis-always "$REDIS_PORT" "$redis"
