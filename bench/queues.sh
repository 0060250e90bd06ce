#!/usr/bin/env bash
# Queue workloads: a 3-node cairn cluster (release build, one shard on all three nodes, every
# write fsynced on a majority) against redis-server with appendfsync always, in the same run,
# each driven by bench/queueload: XADD; XREADGROUP+XACK; LPUSH/BRPOP (latency from push to
# pop); PUBLISH fanned out to 100 subscribers (latency from publish to delivery); SET with
# keyspace notifications on and one subscriber (latency from SET to notification). The cairn
# clients talk to the shard's leader. Prints CSV: op, then per system ops/s, p50 and p99 in
# ms, errors, and cairn/Redis throughput and p99 ratios.
#
#   bash bench/queues.sh                 # SECS=10 per workload, CLIENTS=50
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-18701}
REDIS_PORT=${REDIS_PORT:-18799}
SECS=${SECS:-10}
CLIENTS=${CLIENTS:-50}
command -v redis-server >/dev/null || { echo "bench: redis-server is needed (apt-get install redis-server)"; exit 1; }
cargo build --release -q -p cairn
cargo build --release -q --manifest-path bench/queueload/Cargo.toml --target-dir target
source bench/lib.sh
start_cairn3 "$BASE"
start_redis_always "$REDIS_PORT"
load() { ./target/release/queueload --port "$1" --op "$2" --clients "$CLIENTS" --secs "$SECS" "${@:3}"; }
echo "op,cairn ops/s,cairn p50 ms,cairn p99 ms,cairn errors,redis ops/s,redis p50 ms,redis p99 ms,redis errors,throughput cairn/redis,p99 cairn/redis"
for op in xadd xreadgroup lpush-brpop publish set-events; do
  extra=()
  [ "$op" = set-events ] && extra=(--subscribers 1)
  c=$(load "$leader" "$op" "${extra[@]}")
  r=$(load "$REDIS_PORT" "$op" "${extra[@]}")
  echo "$c,$r" | awk -F, -v OFS=, '{
    printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%.2f,%.2f\n", $1, $2, $3, $4, $5, $7, $8, $9, $10,
      ($7 > 0 ? $2 / $7 : 0), ($9 > 0 ? $4 / $9 : 0) }'
done
