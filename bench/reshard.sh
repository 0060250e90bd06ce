#!/usr/bin/env bash
# Slots moving under load: a 3-node, 3-shard cairn cluster (release build, cluster redirects
# on) is filled with keys by the cluster-aware bench/kvload, then all of shard 1's slots
# (0-5460) move to shard 2 (CAIRN.RESHARD MOVE) while kvload writes with 50 clients, and back
# to shard 1 while it reads. Prints the time each move took, slots and keys per second, and
# the throughput and p99 latency of a load of MOVE_SECS (about as long as a move takes) that
# starts with the move, against the same load just before without one. kvload retries
# -TRYAGAIN (2 ms apart), so the hand-over windows show up as latency; "errors" are requests
# that failed even so.
#
#   bash bench/reshard.sh            # SECS=10 to fill, MOVE_SECS=2 per load
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-17601}
SECS=${SECS:-10}
MOVE_SECS=${MOVE_SECS:-2}
command -v redis-cli >/dev/null || { echo "bench: redis-cli is needed (apt-get install redis-tools)"; exit 1; }
cargo build --release -q -p cairn
cargo build --release -q --manifest-path bench/kvload/Cargo.toml --target-dir target
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cluster="1=127.0.0.1:$((BASE + 10000)),2=127.0.0.1:$((BASE + 10001)),3=127.0.0.1:$((BASE + 10002))"
for i in 1 2 3; do
  CAIRN_LOG=warn ./target/release/cairn server --port $((BASE + i - 1)) --node-id "$i" --bus-port $((BASE + 10000 + i - 1)) \
    --initial-cluster "$cluster" --shards 3 --cluster-redirects yes --data-dir "$work/node$i" >"$work/node$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 100); do
  leaders=$(redis-cli -p "$BASE" INFO raft 2>/dev/null | grep -c 'leader=[1-9]' || true)
  [ "$leaders" -ge 3 ] && break
  sleep 0.2
done
kv() { ./target/release/kvload --proto resp --port "$BASE" --cluster yes --clients 50 --keys 200000 "$@"; }
echo "filling: $(kv --op set --secs "$SECS")" >&2
echo "keys per shard: $(for g in 1 2 3; do redis-cli -p "$BASE" CAIRN.SHARD $g DBSIZE; done | paste -sd' ')" >&2
count_keys() { # keys stored in slots $1..$2
  for s in $(seq "$1" "$2"); do echo "CLUSTER COUNTKEYSINSLOT $s"; done | redis-cli -p "$BASE" | awk '{n += $1} END {print n}'
}
now() { date +%s.%N; }
calc() { awk "BEGIN {print $1}"; }
# One phase: a load with no move, then the same load while a range moves.
phase() { # op first last to
  local op=$1 first=$2 last=$3 to=$4
  local base moving moved_keys t0 t1 took
  moved_keys=$(count_keys "$first" "$last")
  base=$(kv --op "$op" --secs "$MOVE_SECS")
  kv --op "$op" --secs "$MOVE_SECS" >"$work/during" &
  local load=$!
  sleep 0.2
  t0=$(now)
  redis-cli -p "$((BASE + 1))" CAIRN.RESHARD MOVE "$first" "$last" "$to" >"$work/moved"
  t1=$(now)
  wait $load
  moving=$(cat "$work/during")
  took=$(calc "$t1 - $t0")
  echo "$op,$first-$last,$(cat "$work/moved"),$moved_keys,$took,$base,$moving"
}
echo
echo "op,slots,moved,keys,seconds,without move (op,ops/s,p50 ms,p99 ms,errors),during the move (op,ops/s,p50 ms,p99 ms,errors)"
set_row=$(phase set 0 5460 2)
get_row=$(phase get 0 5460 1)
echo "$set_row"
echo "$get_row"
echo
for row in "$set_row" "$get_row"; do
  IFS=, read -r op slots moved keys took bop brate bp50 bp99 berr mop mrate mp50 mp99 merr <<<"$row"
  printf '%s under a move of %s slots (%s keys): %.1f s, %.0f slots/s, %.0f keys/s; %s/s %.0f -> %.0f (%.2fx), p99 %s -> %s ms, errors %s -> %s\n' \
    "$op" "$moved" "$keys" "$took" "$(calc "$moved / $took")" "$(calc "$keys / $took")" \
    "$op" "$brate" "$mrate" "$(calc "$mrate / $brate")" "$bp99" "$mp99" "$berr" "$merr"
done
