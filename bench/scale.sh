#!/usr/bin/env bash
# 16 shards, 3 replicas each, on 3 nodes and then on 5 nodes: throughput of a cluster-aware
# load (bench/kvload --cluster yes, 50 clients, SET then GET, SECS each) and the resident
# memory per node, on this machine. On 3 nodes every node holds every shard; on 5 each node
# holds about 16 * 3 / 5 = 9.6 of them, and leads about 16 / 5. All nodes share two cores.
#
#   bash bench/scale.sh          # SECS=10
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-17701}
SECS=${SECS:-10}
SHARDS=${SHARDS:-16}
command -v redis-cli >/dev/null || { echo "bench: redis-cli is needed (apt-get install redis-tools)"; exit 1; }
cargo build --release -q -p cairn
cargo build --release -q --manifest-path bench/kvload/Cargo.toml --target-dir target
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
run() { # nodes
  local n=$1 cluster="" i
  for i in $(seq 1 "$n"); do cluster="$cluster${cluster:+,}$i=127.0.0.1:$((BASE + 10000 + i - 1))"; done
  local mine=()
  for i in $(seq 1 "$n"); do
    CAIRN_LOG=warn ./target/release/cairn server --port $((BASE + i - 1)) --node-id "$i" --bus-port $((BASE + 10000 + i - 1)) \
      --initial-cluster "$cluster" --shards "$SHARDS" --replicas 3 --cluster-redirects yes --data-dir "$work/n$n-$i" >"$work/n$n-$i.log" 2>&1 &
    pids+=($!); mine+=($!)
  done
  for _ in $(seq 1 150); do
    redis-cli -p "$BASE" CLUSTER INFO 2>/dev/null | grep -q 'cluster_state:ok' && break
    sleep 0.2
  done
  sleep 5 # leader balancing
  local spread held=""
  # `cairn cluster placement`: shard, leader, voters, learners, one shard per line.
  spread=$(./target/release/cairn cluster placement -p "$BASE" | awk 'NR > 1 {print $2}' | sort | uniq -c | awk '{printf "%s%s:%s", sep, $2, $1; sep=" "}')
  for i in $(seq 1 "$n"); do held="$held${held:+ }$i:$(redis-cli -p $((BASE + i - 1)) INFO raft | grep -c '^group[1-9]')"; done
  local set get rss=0
  set=$(./target/release/kvload --proto resp --port "$BASE" --cluster yes --clients 50 --keys 100000 --op set --secs "$SECS")
  get=$(./target/release/kvload --proto resp --port "$BASE" --cluster yes --clients 50 --keys 100000 --op get --secs "$SECS")
  for p in "${mine[@]}"; do rss=$((rss + $(awk '/VmRSS/ {print $2}' /proc/"$p"/status))); done
  echo "$n,$set,$get,$((rss / n / 1024)),$spread,$held"
  for p in "${mine[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
echo "nodes,SET,ops/s,p50 ms,p99 ms,errors,GET,ops/s,p50 ms,p99 ms,errors,RSS MB per node,shard leaders per node (node:count),shard replicas per node (node:count)"
three=$(run 3)
echo "$three"
five=$(run 5)
echo "$five"
s3=$(echo "$three" | cut -d, -f3); s5=$(echo "$five" | cut -d, -f3)
g3=$(echo "$three" | cut -d, -f8); g5=$(echo "$five" | cut -d, -f8)
awk -v s3="$s3" -v s5="$s5" -v g3="$g3" -v g5="$g5" 'BEGIN { printf "5 nodes / 3 nodes: SET %.2fx, GET %.2fx\n", s5 / s3, g5 / g3 }'
