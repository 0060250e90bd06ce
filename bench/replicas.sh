#!/usr/bin/env bash
# Replicas moving under load: a 5-node cairn cluster (release build, 16 shards of 3 replicas,
# cluster redirects on) is filled with keys by the cluster-aware bench/kvload; then node 5 is
# drained (CAIRN.PLACEMENT DRAIN: every replica it holds moves to the other nodes) while
# kvload writes with 50 clients, and the replicas are spread back (CAIRN.PLACEMENT REBALANCE)
# while it reads. Prints how long each took, replicas and keys per second, and the throughput
# and p99 latency of a load of MOVE_SECS that starts with the moves, against the same load
# just before without them. "errors" are requests that failed even after kvload's retries of
# -TRYAGAIN.
#
#   bash bench/replicas.sh            # SECS=10 to fill, MOVE_SECS=5 per load
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-17801}
SECS=${SECS:-10}
MOVE_SECS=${MOVE_SECS:-5}
command -v redis-cli >/dev/null || { echo "bench: redis-cli is needed (apt-get install redis-tools)"; exit 1; }
cargo build --release -q -p cairn
cargo build --release -q --manifest-path bench/kvload/Cargo.toml --target-dir target
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cluster=""
for i in 1 2 3 4 5; do cluster="$cluster${cluster:+,}$i=127.0.0.1:$((BASE + 10000 + i - 1))"; done
for i in 1 2 3 4 5; do
  CAIRN_LOG=warn ./target/release/cairn server --port $((BASE + i - 1)) --node-id "$i" --bus-port $((BASE + 10000 + i - 1)) \
    --initial-cluster "$cluster" --shards 16 --replicas 3 --cluster-redirects yes --data-dir "$work/node$i" >"$work/node$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 150); do
  redis-cli -p "$BASE" CLUSTER INFO 2>/dev/null | grep -q 'cluster_state:ok' && break
  sleep 0.2
done
sleep 3
kv() { ./target/release/kvload --proto resp --port "$BASE" --cluster yes --clients 50 --keys 200000 "$@"; }
echo "filling: $(kv --op set --secs "$SECS")" >&2
# DBSIZE with cluster redirects on counts the shards the node asked leads (as in Redis
# Cluster): ask each shard.
keys=$(for g in $(seq 1 16); do redis-cli -p "$BASE" CAIRN.SHARD "$g" DBSIZE; done | awk '{n += $1} END {print n}')
held() { redis-cli -p $((BASE + 4)) INFO raft | grep -c '^group[1-9]' || true; }
now() { date +%s.%N; }
calc() { awk "BEGIN {print $1}"; }
phase() { # op command...
  local op=$1; shift
  local base moving t0 t1 before
  before=$(held)
  base=$(kv --op "$op" --secs "$MOVE_SECS")
  kv --op "$op" --secs "$MOVE_SECS" >"$work/during" &
  local load=$!
  sleep 0.2
  t0=$(now)
  redis-cli -p "$((BASE + 1))" "$@" >"$work/moved"
  t1=$(now)
  wait $load
  moving=$(cat "$work/during")
  echo "$op,$*,$(cat "$work/moved"),$before,$(held),$(calc "$t1 - $t0"),$base,$moving"
}
echo
echo "keys: $keys"
echo "op,command,replicas moved,node 5 held before,after,seconds,without moves (op,ops/s,p50 ms,p99 ms,errors),during the moves (op,ops/s,p50 ms,p99 ms,errors)"
phase set CAIRN.PLACEMENT DRAIN 5
phase get CAIRN.PLACEMENT REBALANCE
