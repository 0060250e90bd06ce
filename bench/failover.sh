#!/usr/bin/env bash
# Failover time over real processes: a 3-node cairn cluster; in each trial kill -9 the leader (of
# the shard that the written key belongs to) and
# time until a write succeeds through another node; restart the killed node and wait until the
# cluster is whole again. Prints every trial, the median and the max.
#
#   bash bench/failover.sh            # TRIALS=20 by default
#   SIGNAL=TERM bash bench/failover.sh  # graceful: the leader hands leadership over, then exits
#   KEEP=1 CAIRN_LOG=info bash bench/failover.sh  # keep the nodes' logs
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${TRIALS:-20}
BASE=${BASE:-17101}
SIGNAL=${SIGNAL:-KILL}
command -v redis-cli >/dev/null || { echo "failover: redis-cli is needed (apt-get install redis-tools)"; exit 1; }
cargo build --release -q -p cairn
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; gone "$p"; done
  if [ -n "${KEEP:-}" ]; then echo "node logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
cluster="1=127.0.0.1:$((BASE + 10000)),2=127.0.0.1:$((BASE + 10001)),3=127.0.0.1:$((BASE + 10002))"
start() {
  local i=$1
  CAIRN_LOG=${CAIRN_LOG:-warn} ./target/release/cairn server --port $((BASE + i - 1)) --node-id "$i" --bus-port $((BASE + 10000 + i - 1)) \
    --initial-cluster "$cluster" --data-dir "$work/node$i" >>"$work/node$i.log" 2>&1 &
  pids[$i]=$!
  # Out of the job table, so bash does not report the kill -9s as "Killed" job messages.
  disown "$!"
}
# Waits (at most 10 s) until process $1 is gone.
gone() { for _ in $(seq 1000); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.01; done; }
# The node leading the shard of key "after" (the one the trial writes), from a node whose
# INFO raft says it leads that shard (the `slots=` field names each shard's ranges).
slot_of_after=""
leader() {
  [ -n "$slot_of_after" ] || slot_of_after=$(redis-cli -p "$BASE" cluster keyslot after 2>/dev/null || true)
  [ -n "$slot_of_after" ] || return 0
  for i in 1 2 3; do
    if redis-cli -p $((BASE + i - 1)) info raft 2>/dev/null | tr -d '\r' | awk -v s="$slot_of_after" -F'slots=' '
      /role=leader/ { n = split($2, r, ";"); for (k = 1; k <= n; k++) { split(r[k], ab, "-"); if (s >= ab[1] && s <= ab[2]) found = 1 } }
      END { exit !found }'; then echo "$i"; return; fi
  done
}
now_ms() { date +%s%3N; }
for i in 1 2 3; do start "$i"; done
times=()
for trial in $(seq "$TRIALS"); do
  deadline=$(( $(now_ms) + 30000 ))
  l=""
  while [ -z "$l" ] && [ "$(now_ms)" -lt "$deadline" ]; do l=$(leader); sleep 0.05; done
  [ -n "$l" ] || { echo "trial $trial: no leader"; exit 1; }
  other=$(( l % 3 + 1 ))
  redis-cli -p $((BASE + other - 1)) set warm up >/dev/null
  t0=$(now_ms)
  kill -"$SIGNAL" "${pids[$l]}"
  until redis-cli -p $((BASE + other - 1)) set after "$trial" 2>/dev/null | grep -q OK; do
    [ "$(now_ms)" -lt $((t0 + 30000)) ] || { echo "trial $trial: no write within 30 s"; exit 1; }
    sleep 0.01
  done
  ms=$(( $(now_ms) - t0 ))
  times+=("$ms")
  gone "${pids[$l]}"
  echo "trial $trial: at ${t0} ms, SIG$SIGNAL to leader node $l, first write through node $other after ${ms} ms"
  start "$l"
  sleep 1
done
printf '%s\n' "${times[@]}" | sort -n | awk -v sig="$SIGNAL" '{ a[NR] = $1 } END { printf "failover (SIG%s) over %d trials: median %d ms, max %d ms, min %d ms\n", sig, NR, (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2), a[NR], a[1] }'
