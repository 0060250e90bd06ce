#!/usr/bin/env bash
# What an idle shard costs: a 3-node release cluster with SHARDS shards (each a Raft group
# with a replica on every node, ticking and heartbeating with no traffic), measured over SECS
# seconds after it settles: CPU per node (utime + stime from /proc) and resident memory.
#
#   bash bench/idle_shards.sh                 # SHARDS_LIST="3 16 64 128", SECS=10
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-17501}
SECS=${SECS:-10}
SHARDS_LIST=${SHARDS_LIST:-"3 16 64 128"}
cargo build --release -q -p cairn
tck=$(getconf CLK_TCK)
echo "# idle shards, 3 nodes, $(date -u +%Y-%m-%d), $(nproc) cores, ${SECS} s per point"
echo
echo "| shards | CPU per node (% of a core) | RSS per node (MB) | each shard beyond the first row: CPU (% of a core) | and RSS (KB) |"
echo "| --- | --- | --- | --- | --- |"
first=""
for shards in $SHARDS_LIST; do
  work=$(mktemp -d)
  pids=()
  cluster="1=127.0.0.1:$((BASE + 10000)),2=127.0.0.1:$((BASE + 10001)),3=127.0.0.1:$((BASE + 10002))"
  for i in 1 2 3; do
    CAIRN_LOG=warn ./target/release/cairn server --port $((BASE + i - 1)) --node-id "$i" \
      --bus-port $((BASE + 10000 + i - 1)) --initial-cluster "$cluster" --shards "$shards" \
      --data-dir "$work/node$i" >"$work/node$i.log" 2>&1 &
    pids+=($!)
  done
  sleep 8 # elections, leader spreading, the first snapshots
  ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  before=(); for p in "${pids[@]}"; do before+=("$(ticks "$p")"); done
  sleep "$SECS"
  cpu=0; rss=0
  for k in 0 1 2; do
    after=$(ticks "${pids[$k]}")
    cpu=$(awk -v a="$after" -v b="${before[$k]}" -v c="$cpu" -v t="$tck" -v s="$SECS" 'BEGIN { print c + (a - b) / t / s * 100 }')
    r=$(awk '/VmRSS/ {print $2}' "/proc/${pids[$k]}/status")
    rss=$((rss + r))
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
  # Per node: CPU in % of a core, RSS in KB.
  c=$(awk -v c="$cpu" 'BEGIN { print c / 3 }'); r=$(awk -v r="$rss" 'BEGIN { print r / 3 }')
  if [ -z "$first" ]; then
    first="$shards $c $r"
    printf "| %d | %.2f | %.1f | - | - |\n" "$shards" "$c" "$(awk -v r="$r" 'BEGIN { print r / 1024 }')"
  else
    read -r n0 c0 r0 <<<"$first"
    awk -v n="$shards" -v c="$c" -v r="$r" -v n0="$n0" -v c0="$c0" -v r0="$r0" 'BEGIN {
      printf "| %d | %.2f | %.1f | %.3f | %.0f |\n", n, c, r / 1024, (c - c0) / (n - n0), (r - r0) / (n - n0) }'
  fi
done
