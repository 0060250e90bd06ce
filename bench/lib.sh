# Shared by the benchmark scripts (source it): a work directory and the processes started,
# both cleaned up on exit; a 3-node single-shard cairn cluster; redis-server with
# appendfsync always.

work=$(mktemp -d)
pids=()
bench_cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap bench_cleanup EXIT

# start_cairn3 BASE: three release nodes on ports BASE..BASE+2 (buses 10000 above), one shard
# on all three; their pids in `cairn`, the shard leader's port in `leader` (within 20 s).
start_cairn3() {
  local base=$1 i
  local cluster="1=127.0.0.1:$((base + 10000)),2=127.0.0.1:$((base + 10001)),3=127.0.0.1:$((base + 10002))"
  cairn=()
  for i in 1 2 3; do
    CAIRN_LOG=warn ./target/release/cairn server --port $((base + i - 1)) --node-id "$i" --bus-port $((base + 10000 + i - 1)) \
      --initial-cluster "$cluster" --shards 1 --data-dir "$work/node$i" >"$work/node$i.log" 2>&1 &
    pids+=($!); cairn+=($!)
  done
  leader=""
  for _ in $(seq 200); do
    for i in 1 2 3; do
      redis-cli -p $((base + i - 1)) info raft 2>/dev/null | grep -q 'group1:role=leader' && leader=$((base + i - 1))
    done
    [ -n "$leader" ] && break
    sleep 0.1
  done
  [ -n "$leader" ] || { echo "bench: no cairn leader"; exit 1; }
}

# start_redis_always PORT: redis-server with appendfsync always; its pid in `redis`.
start_redis_always() {
  redis-server --port "$1" --save "" --appendonly yes --appendfsync always --dir "$work" >"$work/redis.log" 2>&1 &
  redis=$!
  pids+=($redis)
  sleep 1
}
