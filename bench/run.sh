#!/usr/bin/env bash
# Benchmarks cairn against redis-server (no persistence) on this machine, in one run, with
# redis-benchmark: SET GET INCR LPUSH RPOP HSET ZADD, 50 clients, pipelines of 1 and 16.
# Prints a markdown table of ops/s and cairn/redis ratios, and memory for 1M 100-byte keys.
#
#   bash bench/run.sh            # REQUESTS=200000 by default; REQUESTS=1000000 for steadier numbers
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
TESTS=set,get,incr,lpush,rpop,hset,zadd
CAIRN_PORT=${CAIRN_PORT:-17001}
REDIS_PORT=${REDIS_PORT:-17002}
for tool in redis-server redis-benchmark redis-cli; do
  command -v $tool >/dev/null || { echo "bench: $tool is needed (apt-get install redis-server redis-tools)"; exit 1; }
done
cargo build --release -q -p cairn
work=$(mktemp -d)
cleanup() { kill "${cairn_pid:-}" "${redis_pid:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
./target/release/cairn server --port $CAIRN_PORT --data-dir "$work/cairn" >"$work/cairn.log" 2>&1 &
cairn_pid=$!
redis-server --port $REDIS_PORT --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
redis_pid=$!
for port in $CAIRN_PORT $REDIS_PORT; do
  for _ in $(seq 100); do redis-cli -p $port ping >/dev/null 2>&1 && break; sleep 0.1; done
done

# name -> ops/s from redis-benchmark's CSV ("SET","123.45",...)
run() { redis-benchmark -p "$1" -c $CLIENTS -n $REQUESTS -P "$2" -t $TESTS -r 100000 --csv -q 2>/dev/null | tr -d '"' | awk -F, 'NR>1 && $1 !~ /test/ {print $1","$2","$6}'; }

echo "# cairn vs redis-server, $(date -u +%Y-%m-%d), $(nproc) cores, $(redis-server --version | awk '{print $3}')"
echo
echo "| test | pipeline | cairn ops/s | redis ops/s | ratio | cairn p50 ms | redis p50 ms |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for pipeline in 1 16; do
  redis-cli -p $CAIRN_PORT flushall >/dev/null; redis-cli -p $REDIS_PORT flushall >/dev/null
  run $CAIRN_PORT $pipeline >"$work/c.csv"
  run $REDIS_PORT $pipeline >"$work/r.csv"
  join -t, <(sort "$work/c.csv") <(sort "$work/r.csv") | while IFS=, read -r name c_ops c_p50 r_ops r_p50; do
    ratio=$(awk -v a="$c_ops" -v b="$r_ops" 'BEGIN { printf "%.2f", a / b }')
    printf "| %s | %s | %.0f | %.0f | %s | %s | %s |\n" "$name" "$pipeline" "$c_ops" "$r_ops" "$ratio" "$c_p50" "$r_p50"
  done
done

# Memory: RSS growth while loading 1M keys of 100 bytes (redis-benchmark SET over 1M distinct keys).
rss() { awk '/VmRSS/ {print $2 * 1024}' /proc/"$1"/status; }
redis-cli -p $CAIRN_PORT flushall >/dev/null; redis-cli -p $REDIS_PORT flushall >/dev/null
c0=$(rss $cairn_pid); r0=$(rss $redis_pid)
for port in $CAIRN_PORT $REDIS_PORT; do
  redis-benchmark -p $port -c $CLIENTS -n 3000000 -P 16 -t set -d 100 -r 1000000 -q >/dev/null 2>&1
done
c_keys=$(redis-cli -p $CAIRN_PORT dbsize); r_keys=$(redis-cli -p $REDIS_PORT dbsize)
c1=$(rss $cairn_pid); r1=$(rss $redis_pid)
r_used=$(redis-cli -p $REDIS_PORT info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
echo
echo "| memory, 100-byte values | keys | RSS growth | bytes/key |"
echo "| --- | --- | --- | --- |"
awk -v k="$c_keys" -v d="$((c1 - c0))" 'BEGIN { printf "| cairn | %d | %.1f MB | %.0f |\n", k, d/1e6, d/k }'
awk -v k="$r_keys" -v d="$((r1 - r0))" 'BEGIN { printf "| redis | %d | %.1f MB | %.0f |\n", k, d/1e6, d/k }'
awk -v k="$r_keys" -v d="$r_used" 'BEGIN { printf "| redis used_memory | %d | %.1f MB | %.0f |\n", k, d/1e6, d/k }'
awk -v a="$((c1 - c0))" -v b="$((r1 - r0))" 'BEGIN { printf "\ncairn/redis RSS growth: %.2f\n", a / b }'
