#!/usr/bin/env bash
# The bridge against plain Zenoh, interleaved round by round (64-byte
# bodies unless SIZE is set), on one machine over loopback TCP:
#   bus-bridge/bench/run.sh [ROUNDS]       (from the repository root)
# Plain Zenoh: two processes, a listening and a connecting peer.
# Bridged: two daemons, two bridges linked by Zenoh, and the same roles as
# bus clients on either side (publisher on B, subscriber on A; requests from
# B to a service on A). Prints each round with the cache-line probe, then
# medians and the paired ratios.
set -euo pipefail
rounds=${1:-5}; size=${SIZE:-64}; n=${N:-200000}; lat=${LAT:-10000}
# PROFILE=fastrel builds with thin LTO (minutes less; for trying changes).
# COALESCE=N passes --coalesce N to both bridges (1: a sample per message).
# HOPS=1 traces every bridged ping (bus_bridge::hops) and prints, per hop,
# how long after the ping was sent it got there (medians over the rounds).
profile=${PROFILE:-release}
cargo build --profile "$profile" -j2 -q -p bus-daemon -p bus-bridge --features bus-bridge/bench
bin=./target/$profile
ping_err=/dev/stderr
if [ -n "${HOPS:-}" ]; then export HOPTRACE=1; fi
dir=$(mktemp -d); pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
if [ -n "${HOPS:-}" ]; then ping_err=$dir/ping.hops; fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timed out: $2 in $1" >&2; cat "$1" >&2; exit 1; }
start() { local log=$1; shift; "$@" > "$log" 2>&1 & pids+=($!); }

zp=$(port); bp=$(port); ep=$(port)
start "$dir/da" "$bin/shmbusd" --socket "$dir/a.sock"; wait_for "$dir/da" "shmbusd: ready"
start "$dir/db" "$bin/shmbusd" --socket "$dir/b.sock"; wait_for "$dir/db" "shmbusd: ready"
start "$dir/ba" "$bin/shmbus-bridge" --socket "$dir/a.sock" --no-scouting --listen "tcp/127.0.0.1:$bp" \
  --export bench ping rpc --import pong --stats-interval 0s --coalesce "${COALESCE:-32}"
start "$dir/bb" "$bin/shmbus-bridge" --socket "$dir/b.sock" --no-scouting --connect "tcp/127.0.0.1:$bp" \
  --import bench ping rpc --export pong --stats-interval 0s --coalesce "${COALESCE:-32}"
for s in bench ping rpc; do wait_for "$dir/bb" "^shmbus-bridge: linked $s$"; done
wait_for "$dir/ba" "^shmbus-bridge: linked pong$"
start "$dir/ze" "$bin/bridge-bench" zenoh-echo "tcp/127.0.0.1:$ep"; wait_for "$dir/ze" ready
start "$dir/be" "$bin/bridge-bench" bus-echo "$dir/a.sock"; wait_for "$dir/be" ready

val() { awk -v k="$1" '$1==k {print $2}' "$2"; }
for r in $(seq "$rounds"); do
  probe=$("$bin/bridge-bench" probe | awk '{print $2}')
  "$bin/bridge-bench" zenoh-sink "tcp/127.0.0.1:$zp" "$n" > "$dir/zs" & s=$!
  wait_for "$dir/zs" ready
  "$bin/bridge-bench" zenoh-source "tcp/127.0.0.1:$zp" "$n" "$size"; wait $s
  "$bin/bridge-bench" bus-sink "$dir/a.sock" "$n" > "$dir/bs" & s=$!
  wait_for "$dir/bs" ready
  "$bin/bridge-bench" bus-source "$dir/b.sock" "$n" "$size"; wait $s
  "$bin/bridge-bench" zenoh-ping "tcp/127.0.0.1:$ep" "$lat" "$size" > "$dir/zl"
  "$bin/bridge-bench" bus-ping "$dir/b.sock" "$lat" "$size" > "$dir/bl" 2>> "$ping_err"
  "$bin/bridge-bench" zenoh-get "tcp/127.0.0.1:$ep" "$lat" "$size" > "$dir/zg"
  "$bin/bridge-bench" bus-req "$dir/b.sock" "$lat" "$size" > "$dir/bg"
  echo "round=$r probe_ns=$probe zenoh_rate=$(val rate "$dir/zs") bridged_rate=$(val rate "$dir/bs")" \
    "zenoh_oneway_p50_ns=$(val p50_ns "$dir/zl") bridged_oneway_p50_ns=$(val p50_ns "$dir/bl")" \
    "zenoh_get_p50_ns=$(val p50_ns "$dir/zg") bridged_request_p50_ns=$(val p50_ns "$dir/bg")" | tee -a "$dir/rounds"
done
python3 - "$dir/rounds" <<'PY'
import sys, statistics as st
rows = [dict(kv.split("=") for kv in l.split()) for l in open(sys.argv[1])]
col = lambda k: [float(r[k]) for r in rows]
pair = lambda a, b: st.median([float(r[a]) / float(r[b]) for r in rows])
print(f"probe median {st.median(col('probe_ns')):.0f} ns (range {min(col('probe_ns')):.0f}-{max(col('probe_ns')):.0f})")
print(f"throughput  zenoh {st.median(col('zenoh_rate'))/1e3:.0f} k/s  bridged {st.median(col('bridged_rate'))/1e3:.0f} k/s  ratio {pair('bridged_rate','zenoh_rate'):.2f}x")
print(f"one-way p50 zenoh {st.median(col('zenoh_oneway_p50_ns'))/1e3:.1f} us  bridged {st.median(col('bridged_oneway_p50_ns'))/1e3:.1f} us  ratio {pair('bridged_oneway_p50_ns','zenoh_oneway_p50_ns'):.2f}x")
print(f"request p50 zenoh get {st.median(col('zenoh_get_p50_ns'))/1e3:.1f} us  bridged {st.median(col('bridged_request_p50_ns'))/1e3:.1f} us  ratio {pair('bridged_request_p50_ns','zenoh_get_p50_ns'):.2f}x")
PY
[ -z "${HOPS:-}" ] || cat "$dir"/ba "$dir"/bb "$dir"/be "$dir"/ping.hops | python3 -c '
import sys, statistics as st
w = {}
for l in sys.stdin:
    f = l.split()
    if len(f) < 7 or f[0] != "hop" or f[3] == "n=2000":  # the first window warms up
        continue
    kv = dict(x.split("=") for x in f[4:])
    w.setdefault((f[1], f[2]), []).append([float(kv[k]) for k in ("p10_us", "p50_us", "p90_us")])
print("hop (time since the ping was sent, us)     p10      p50      p90")
for (point, what), v in sorted(w.items(), key=lambda kv: st.median(x[1] for x in kv[1])):
    print(f"{point:18} {what:20} " + " ".join(f"{st.median(x[i] for x in v):8.1f}" for i in range(3)))
'
