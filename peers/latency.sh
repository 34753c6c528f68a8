#!/usr/bin/env bash
# Interleaves iceoryx2 and shmbus one-way latency (busy-polling receiver,
# 8 B / 64 B / 4 KiB) round by round, and prints the p50 ratios per size.
#   peers/latency.sh [ROUNDS]      (from the repository root, after
#   cargo build --release -p bus-daemon -p bus-cli and the peers build in peers/README.md)
set -euo pipefail
rounds=${1:-3}
ice=./target/peers/release/iceoryx2-bench
shm=./target/release/shmbus
out=$(mktemp -d)
for r in $(seq "$rounds"); do
  echo "round $r" >&2
  "$ice" --latency --rounds 1 --no-probe 2>/dev/null | grep '^latency' | sed "s/round=1/round=$r/" >> "$out/ice"
  # shmbus bench measures latency at the smallest and largest size given.
  "$shm" bench --only latency --sizes 8,4096 --reps 1 --json 2>/dev/null > "$out/shm$r.json"
  "$shm" bench --only latency --sizes 64 --reps 1 --json 2>/dev/null > "$out/shm64-$r.json"
done
python3 - "$out" "$rounds" <<'PY'
import json, sys, statistics as st
out, rounds = sys.argv[1], int(sys.argv[2])
ice = {}
for line in open(f"{out}/ice"):
    kv = dict(x.split("=") for x in line.split()[1:])
    ice.setdefault(int(kv["size"]), {})[int(kv["round"])] = (float(kv["p50_ns"]), float(kv["p99_ns"]), kv["handoff_ns"])
shm = {}
for r in range(1, rounds + 1):
    for m in json.load(open(f"{out}/shm{r}.json")) + json.load(open(f"{out}/shm64-{r}.json")):
        if m["name"].startswith("latency/shmbus/") and m["name"].endswith("/busy"):
            size = int(m["name"].split("/")[2])
            shm.setdefault(size, {})[r] = (m["p50_ns"], m["p99_ns"], m["handoff_ns"])
print("shmbus probe by round:", sorted({r: round(v[2]) for d in shm.values() for r, v in d.items()}.items()))
print("iceoryx2-bench probe by round:", sorted({r: v[2] for d in ice.values() for r, v in d.items()}.items()))
print(f"{'one-way latency, busy-polling receiver':40} {'size':>6} {'p50 median':>11} {'p99 median':>11}")
for size in sorted(ice):
    for name, d in (("iceoryx2 0.10", ice[size]), ("shmbus", shm.get(size, {}))):
        if d:
            print(f"{name:40} {size:>6} {st.median(v[0] for v in d.values()):>8.0f} ns {st.median(v[1] for v in d.values()):>8.0f} ns")
    common = sorted(set(ice[size]) & set(shm.get(size, {})))
    if common:
        print(f"{'  shmbus / iceoryx2 p50, paired rounds':40} {size:>6} {st.median(shm[size][r][0] / ice[size][r][0] for r in common):>10.2f}x")
PY
