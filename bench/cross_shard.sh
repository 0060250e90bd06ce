#!/usr/bin/env bash
# Multi-key commands and transactions within one shard and across shards: a 3-node cairn
# cluster with three shards (leaders spread over the nodes, every write fsynced on a
# majority), and redis-server with appendfsync always, in one run, each driven by
# bench/kvload: MSET of three keys, MGET of three keys, and MULTI/INCR/INCR/EXEC, each with
# keys of one hash tag (one slot: cairn's single-shard path, one log entry) and with random
# keys (on cairn mostly a cross-shard transaction: PREPARE on each shard, COMMIT on one, APPLY
# on the others). Clients talk to node 1, which relays or coordinates. Prints CSV: op, keys,
# then per system ops/s, p50 and p99 in ms, errors; and the ratios cross/single (cairn) and
# cairn/Redis.
#
#   bash bench/cross_shard.sh           # SECS=10 per workload, CLIENTS=50
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-18801}
REDIS_PORT=${REDIS_PORT:-18899}
SECS=${SECS:-10}
CLIENTS=${CLIENTS:-50}
command -v redis-server >/dev/null || { echo "bench: redis-server is needed (apt-get install redis-server)"; exit 1; }
cargo build --release -q -p cairn
cargo build --release -q --manifest-path bench/kvload/Cargo.toml --target-dir target
source bench/lib.sh
cluster="1=127.0.0.1:$((BASE + 10000)),2=127.0.0.1:$((BASE + 10001)),3=127.0.0.1:$((BASE + 10002))"
for i in 1 2 3; do
  CAIRN_LOG=warn ./target/release/cairn server --port $((BASE + i - 1)) --node-id "$i" --bus-port $((BASE + 10000 + i - 1)) \
    --initial-cluster "$cluster" --shards 3 --data-dir "$work/node$i" >"$work/node$i.log" 2>&1 &
  pids+=($!)
done
start_redis_always "$REDIS_PORT"
# Every shard has a leader: a cross-shard write goes through.
for _ in $(seq 200); do
  redis-cli -p "$BASE" mset "{a}" 1 "{b}" 1 "{c}" 1 2>/dev/null | grep -q OK && break
  sleep 0.1
done
load() { ./target/release/kvload --port "$1" --op "$2" --clients "$CLIENTS" --secs "$SECS" "${@:3}"; }
echo "op,keys,cairn ops/s,cairn p50 ms,cairn p99 ms,cairn errors,redis ops/s,redis p50 ms,redis p99 ms,redis errors,throughput cairn/redis,p99 cairn/redis"
declare -A single
for op in mset mget tx; do
  for keys in one-shard cross-shard; do
    extra=()
    [ "$keys" = one-shard ] && extra=(--same-slot yes)
    c=$(load "$BASE" "$op" "${extra[@]}")
    r=$(load "$REDIS_PORT" "$op" "${extra[@]}")
    echo "$c,$r" | awk -F, -v OFS=, -v keys="$keys" '{
      printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%.2f,%.2f\n", $1, keys, $2, $3, $4, $5, $7, $8, $9, $10,
        ($7 > 0 ? $2 / $7 : 0), ($9 > 0 ? $4 / $9 : 0) }'
    tput=$(echo "$c" | cut -d, -f2)
    p99=$(echo "$c" | cut -d, -f4)
    if [ "$keys" = one-shard ]; then
      single[$op]="$tput,$p99"
    else
      echo "$op,$tput,$p99,${single[$op]}" | awk -F, '{
        printf "# %s on cairn, cross-shard vs one-shard: throughput %.2f, p99 %.2f\n", $1,
          ($4 > 0 ? $2 / $4 : 0), ($5 > 0 ? $3 / $5 : 0) }' >>"$work/ratios"
    fi
  done
done
cat "$work/ratios"
