#!/usr/bin/env bash
# Replicated throughput: a 3-node cairn cluster (every write fsynced on a majority) against
# redis-server with appendfsync always (every write fsynced on one node), on this machine, in one
# run: SET and GET, 50 clients, pipelines of 1 and 16, through cairn's leader and a follower.
#
#   bash bench/replicated.sh          # REQUESTS=50000 by default
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-50000}
BASE=${BASE:-17201}
REDIS_PORT=${REDIS_PORT:-17299}
for tool in redis-server redis-benchmark redis-cli; do
  command -v $tool >/dev/null || { echo "bench: $tool is needed (apt-get install redis-server redis-tools)"; exit 1; }
done
cargo build --release -q -p cairn
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cluster="1=127.0.0.1:$((BASE + 10000)),2=127.0.0.1:$((BASE + 10001)),3=127.0.0.1:$((BASE + 10002))"
for i in 1 2 3; do
  CAIRN_LOG=warn ./target/release/cairn server --port $((BASE + i - 1)) --node-id "$i" --bus-port $((BASE + 10000 + i - 1)) \
    --initial-cluster "$cluster" --data-dir "$work/node$i" >"$work/node$i.log" 2>&1 &
  pids+=($!)
done
redis-server --port $REDIS_PORT --save "" --appendonly yes --appendfsync always --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
leader=""
for _ in $(seq 200); do
  for i in 1 2 3; do
    redis-cli -p $((BASE + i - 1)) info raft 2>/dev/null | grep -q role=leader && leader=$((BASE + i - 1))
  done
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "no leader"; exit 1; }
follower=$(( leader == BASE ? BASE + 1 : BASE ))
run() { redis-benchmark -p "$1" -c 50 -n "$REQUESTS" -P "$2" -t set,get -r 100000 --csv -q 2>/dev/null | tr -d '"' | awk -F, 'NR>1 {print $1","$2","$6","$8}'; }
echo "# 3-node cairn vs redis-server appendfsync always, $(date -u +%Y-%m-%d), $(nproc) cores"
echo
echo "| test | pipeline | cairn leader ops/s | via follower ops/s | redis always ops/s | leader/redis | cairn p50/p99 ms | redis p50/p99 ms |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for p in 1 16; do
  run "$leader" "$p" | sort >"$work/l.csv"
  run "$follower" "$p" | sort >"$work/f.csv"
  run "$REDIS_PORT" "$p" | sort >"$work/r.csv"
  join -t, "$work/l.csv" "$work/f.csv" | join -t, - "$work/r.csv" | while IFS=, read -r name lo lp50 lp99 fo _ _ ro rp50 rp99; do
    ratio=$(awk -v a="$lo" -v b="$ro" 'BEGIN { printf "%.2f", a / b }')
    printf "| %s | %s | %.0f | %.0f | %.0f | %s | %s / %s | %s / %s |\n" "$name" "$p" "$lo" "$fo" "$ro" "$ratio" "$lp50" "$lp99" "$rp50" "$rp99"
  done
done
