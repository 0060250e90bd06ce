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

# name,ops/s,p50 from redis-benchmark's CSV
run() { redis-benchmark -p "$1" -c $CLIENTS -n $REQUESTS -P "$2" -t $TESTS -r 100000 --csv -q 2>/dev/null | tr -d '"' | awk -F, 'NR>1 && $1 !~ /test/ {print $1","$2","$6}'; }
# The median of each test's ops/s and p50 over the rounds in files $@.
median() {
  python3 - "$@" <<'PY'
import statistics, sys
rows = {}
for path in sys.argv[1:]:
    for line in open(path):
        name, ops, p50 = line.strip().split(",")
        rows.setdefault(name, ([], []))
        rows[name][0].append(float(ops))
        rows[name][1].append(float(p50))
for name, (ops, p50) in rows.items():
    print(f"{name},{statistics.median(ops):.0f},{statistics.median(p50):.3f}")
PY
}

ROUNDS=${ROUNDS:-3}
echo "# cairn vs redis-server, $(date -u +%Y-%m-%d), $(nproc) cores, $(redis-server --version | awk '{print $3}')"
echo
echo "Median of $ROUNDS interleaved rounds (cairn, redis, cairn, redis, ...), $REQUESTS requests per test, $CLIENTS clients."
echo
echo "| test | pipeline | cairn ops/s | redis ops/s | ratio | cairn p50 ms | redis p50 ms |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for pipeline in 1 16; do
  for round in $(seq $ROUNDS); do
    redis-cli -p $CAIRN_PORT flushall >/dev/null; redis-cli -p $REDIS_PORT flushall >/dev/null
    run $CAIRN_PORT $pipeline >"$work/c$round.csv"
    run $REDIS_PORT $pipeline >"$work/r$round.csv"
  done
  median "$work"/c[0-9]*.csv | sort >"$work/c.csv"
  median "$work"/r[0-9]*.csv | sort >"$work/r.csv"
  rm -f "$work"/c[0-9]*.csv "$work"/r[0-9]*.csv
  join -t, "$work/c.csv" "$work/r.csv" | while IFS=, read -r name c_ops c_p50 r_ops r_p50; do
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
