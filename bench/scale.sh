#!/usr/bin/env bash
# 16 shards on 3 nodes, then on 5 nodes: throughput of a cluster-aware load (bench/kvload
# --cluster yes, 50 clients, SET then GET, SECS each) and the resident memory per node, on
# this machine. Every node holds a replica of every shard (5 replicas per shard on 5 nodes:
# placing 3 on 5 is not built yet), so the 5-node cluster does more work per write, on the
# same two cores.
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
      --initial-cluster "$cluster" --shards "$SHARDS" --cluster-redirects yes --data-dir "$work/n$n-$i" >"$work/n$n-$i.log" 2>&1 &
    pids+=($!); mine+=($!)
  done
  for _ in $(seq 1 150); do
    leaders=$(redis-cli -p "$BASE" INFO raft 2>/dev/null | grep -c 'leader=[1-9]' || true)
    [ "$leaders" -ge $((SHARDS + 1)) ] && break
    sleep 0.2
  done
  sleep 5 # leader balancing
  local spread
  spread=$(redis-cli -p "$BASE" INFO raft | grep -o 'group[1-9][0-9]*:role=[a-z]*,leader=[0-9]*' | sed 's/.*leader=//' | sort | uniq -c | awk '{printf "%s%s:%s", sep, $2, $1; sep=" "}')
  local set get rss=0
  set=$(./target/release/kvload --proto resp --port "$BASE" --cluster yes --clients 50 --keys 100000 --op set --secs "$SECS")
  get=$(./target/release/kvload --proto resp --port "$BASE" --cluster yes --clients 50 --keys 100000 --op get --secs "$SECS")
  for p in "${mine[@]}"; do rss=$((rss + $(awk '/VmRSS/ {print $2}' /proc/"$p"/status))); done
  echo "$n,$set,$get,$((rss / n / 1024)),$spread"
  for p in "${mine[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
echo "nodes,SET,ops/s,p50 ms,p99 ms,errors,GET,ops/s,p50 ms,p99 ms,errors,RSS MB per node,shard leaders per node (node:count)"
three=$(run 3)
echo "$three"
five=$(run 5)
echo "$five"
s3=$(echo "$three" | cut -d, -f3); s5=$(echo "$five" | cut -d, -f3)
g3=$(echo "$three" | cut -d, -f8); g5=$(echo "$five" | cut -d, -f8)
awk -v s3="$s3" -v s5="$s5" -v g3="$g3" -v g5="$g5" 'BEGIN { printf "5 nodes / 3 nodes: SET %.2fx, GET %.2fx\n", s5 / s3, g5 / g3 }'
