#!/usr/bin/env bash
# Replicated throughput: a 3-node cairn cluster (every write fsynced on a majority) against
# redis-server with appendfsync always (every write fsynced on one node), on this machine, in one
# run: SET and GET, 50 clients, pipelines of 1 and 16, through cairn's leader and a follower.
# Then one client program (bench/kvload) drives cairn, redis-server (appendfsync always, and no
# persistence) and a 3-member etcd cluster (Debian's etcd-server; linearizable reads, its default)
# with the same workload, SET/put and GET/range at 50 clients, and prints the ratios.
#
#   bash bench/replicated.sh          # REQUESTS=50000, SECS=10 by default
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-50000}
BASE=${BASE:-17201}
REDIS_PORT=${REDIS_PORT:-17299}
PLAIN_PORT=${PLAIN_PORT:-17298}
ETCD_BASE=${ETCD_BASE:-17401}
SECS=${SECS:-10}
for tool in redis-server redis-benchmark redis-cli etcd etcdctl; do
  command -v $tool >/dev/null || { echo "bench: $tool is needed (apt-get install redis-server redis-tools etcd-server etcd-client)"; exit 1; }
done
cargo build --release -q -p cairn
cargo build --release -q --manifest-path bench/kvload/Cargo.toml --target-dir target
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cluster="1=127.0.0.1:$((BASE + 10000)),2=127.0.0.1:$((BASE + 10001)),3=127.0.0.1:$((BASE + 10002))"
# The main comparison: one shard (one Raft group), clients at its leader, as measured for
# the replication issue. A second cairn cluster with three shards (leaders spread) is driven
# by a cluster-aware client in the same-client table below.
for i in 1 2 3; do
  CAIRN_LOG=warn ./target/release/cairn server --port $((BASE + i - 1)) --node-id "$i" --bus-port $((BASE + 10000 + i - 1)) \
    --initial-cluster "$cluster" --shards 1 --data-dir "$work/node$i" >"$work/node$i.log" 2>&1 &
  pids+=($!)
done
SHARDED=$((BASE + 50))
sharded_cluster="1=127.0.0.1:$((SHARDED + 10000)),2=127.0.0.1:$((SHARDED + 10001)),3=127.0.0.1:$((SHARDED + 10002))"
for i in 1 2 3; do
  CAIRN_LOG=warn ./target/release/cairn server --port $((SHARDED + i - 1)) --node-id "$i" --bus-port $((SHARDED + 10000 + i - 1)) \
    --initial-cluster "$sharded_cluster" --shards 3 --data-dir "$work/sharded$i" >"$work/sharded$i.log" 2>&1 &
  pids+=($!)
done
redis-server --port $REDIS_PORT --save "" --appendonly yes --appendfsync always --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
redis-server --port $PLAIN_PORT --save "" --appendonly no >"$work/redis-plain.log" 2>&1 &
pids+=($!)
etcd_cluster=""
for i in 1 2 3; do etcd_cluster+="${etcd_cluster:+,}e$i=http://127.0.0.1:$((ETCD_BASE + 100 + i))"; done
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$((ETCD_BASE + i))" --advertise-client-urls "http://127.0.0.1:$((ETCD_BASE + i))" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_BASE + 100 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_BASE + 100 + i))" \
    --initial-cluster "$etcd_cluster" --initial-cluster-state new --initial-cluster-token cairn-bench >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
done
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

# The same client program against every system: pipeline 1, 50 clients, SECS seconds per test.
etcd_leader=""
for _ in $(seq 100); do
  etcd_leader=$(ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$((ETCD_BASE + 1)),127.0.0.1:$((ETCD_BASE + 2)),127.0.0.1:$((ETCD_BASE + 3))" \
    endpoint status -w json 2>/dev/null | python3 -c 'import json,sys
for e in json.load(sys.stdin):
    if e["Status"]["header"]["member_id"] == e["Status"]["leader"]: print(e["Endpoint"].rsplit(":", 1)[1])' || true)
  [ -n "$etcd_leader" ] && break
  sleep 0.1
done
[ -n "$etcd_leader" ] || { echo "etcd elected no leader"; exit 1; }
load() { ./target/release/kvload --proto "$1" --port "$2" --op "$3" --clients 50 --secs "$SECS" ${4:+--cluster yes}; }
echo
echo "### Same client (bench/kvload), 50 clients, pipeline 1, ${SECS} s per test, 100k random keys"
echo
echo "| system | SET ops/s | SET p50/p99 ms | GET ops/s | GET p50/p99 ms | errors |"
echo "| --- | --- | --- | --- | --- | --- |"
declare -A set_ops get_ops
for sys in "cairn-3-leader resp $leader" "cairn-3-shards-cluster-client resp $SHARDED cluster" "redis-always resp $REDIS_PORT" "redis-no-persistence resp $PLAIN_PORT" "etcd-3-leader etcd $etcd_leader"; do
  read -r name proto port cluster_client <<<"$sys"
  IFS=, read -r _ so sp50 sp99 serr <<<"$(load "$proto" "$port" set "$cluster_client")"
  IFS=, read -r _ go gp50 gp99 gerr <<<"$(load "$proto" "$port" get "$cluster_client")"
  set_ops[$name]=$so
  get_ops[$name]=$go
  echo "| $name | $so | $sp50 / $sp99 | $go | $gp50 / $gp99 | $((serr + gerr)) |"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "cairn SET / redis appendfsync always: $(ratio "${set_ops[cairn-3-leader]}" "${set_ops[redis-always]}") (target >= 1.0)"
echo "cairn GET / redis without persistence: $(ratio "${get_ops[cairn-3-leader]}" "${get_ops[redis-no-persistence]}") (target >= 0.8)"
echo "cairn 3 shards (cluster client) SET / redis appendfsync always: $(ratio "${set_ops[cairn-3-shards-cluster-client]}" "${set_ops[redis-always]}")"
echo "cairn SET / etcd put: $(ratio "${set_ops[cairn-3-leader]}" "${set_ops[etcd-3-leader]}")"
echo "cairn GET / etcd linearizable range: $(ratio "${get_ops[cairn-3-leader]}" "${get_ops[etcd-3-leader]}")"
