#!/usr/bin/env bash
# Interleaves iceoryx2 and shmbus fan-out measurements round by round, so
# that both sides of every ratio saw the same state of the machine.
#   peers/compare.sh [ROUNDS]      (from the repository root, after
#   cargo build --release -p bus-daemon -p bus-cli and the peers build in peers/README.md)
# With FLOOR=path/to/bench-floor (the measuring stick of ../shared/bench-floor,
# built outside this repository), its variants A and C run in the same rounds
# and the ratios to them are printed too.
set -euo pipefail
rounds=${1:-5}
# REPS=N (default 1): each `shmbus bench` runs N rounds and only its last
# counts (before ac42cd8 its first round measured 1.3-1.8x lower than the
# later ones, BENCHMARKS.md sessions 17-18; iceoryx2-bench and bench-floor
# warm up first).
reps=${REPS:-1}
ice=./target/peers/release/iceoryx2-bench
shm=./target/release/shmbus
out=$(mktemp -d)
for r in $(seq "$rounds"); do
  echo "round $r" >&2
  "$ice" --rounds 1 2>/dev/null | grep -v '^#' | grep round= | sed "s/round=1/round=$r/;s/^/ice-spin /" >> "$out/ice"
  "$ice" --rounds 1 --only 1toN --sub-idle yield 2>/dev/null | grep round= | sed "s/round=1/round=$r/;s/^/ice-yield /" >> "$out/ice"
  "$ice" --rounds 1 --only 1toN --sub-idle sleep:50 2>/dev/null | grep round= | sed "s/round=1/round=$r/;s/^/ice-sleep /" >> "$out/ice"
  # With FLOOR, the whole throughput suite (its batches of 32 are compared too).
  "$shm" bench --only "$([ -n "${FLOOR:-}" ] && echo throughput || echo fanout)" --sizes 64 --reps "$reps" --json 2> "$out/shm$r.log" > "$out/shm$r.json"
  if [ -n "${FLOOR:-}" ]; then
    for v in A C; do "$FLOOR" "$v" 2>/dev/null | grep RESULT | sed "s/^/$r $v /" >> "$out/floor"; done
  fi
done
python3 - "$out" "$rounds" "$reps" <<'PY'
import json, re, sys, statistics as st
out, rounds, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ice = {}
for line in open(f"{out}/ice"):
    f = line.split()
    kind, case = f[0], f[1]
    kv = dict(x.split("=") for x in f[2:] if "=" in x)
    r = int(kv["round"])
    v = float(kv.get("msgs_per_sec") or kv["per_sub_median"])
    ice.setdefault((kind, case), {})[r] = (v, float(kv.get("handoff_ns", "nan")))
shm = {}
for r in range(1, rounds + 1):
    if reps == 1:
        for m in json.load(open(f"{out}/shm{r}.json")):
            shm.setdefault(m["name"], {})[r] = (m["msgs_per_sec"] or 0, m["handoff_ns"])
        continue
    # The progress lines of the last round (the JSON holds medians over all).
    for line in open(f"{out}/shm{r}.log"):
        m = re.search(rf"\] round {reps} (\S+): ([\d.]+) M msg/s.*hand-off (\d+) ns", line)
        if m:
            shm.setdefault(m[1], {})[r] = (float(m[2]) * 1e6, float(m[3]))
rows = [
    ("iceoryx2 1->1 (busy-poll)", ice.get(("ice-spin", "1to1"), {})),
    ("iceoryx2 1->4, per subscriber (busy-poll)", ice.get(("ice-spin", "1to4"), {})),
    ("iceoryx2 1->4, per subscriber (poll, yield when empty)", ice.get(("ice-yield", "1to4"), {})),
    ("shmbus 1->1 (header)", shmbus := shm.get("throughput/shmbus/64/header", {})),
    ("iceoryx2 1->4, per subscriber (poll, sleep 50 us when empty)", ice.get(("ice-sleep", "1to4"), {})),
    ("shmbus 1->4 groups, per receiver (poll, yield when empty)", shm.get("throughput-1to4groups/shmbus/64", {})),
    ("shmbus 1->4 groups, per receiver (poll, sleep 50 us when empty)", shm.get("throughput-1to4groups-sleep50us/shmbus/64", {})),
    ("shmbus 1->1 with a tap draining", shm.get("throughput-with-tap/shmbus/64", {})),
    ("shmbus 1->1 with a stopped tap", shm.get("throughput-with-stopped-tap/shmbus/64", {})),
    ("shmbus 1->1, receiver pausing 128 between empty polls (opt-in)", paused := shm.get("throughput-paused128/shmbus/64/header", {})),
]
print(f"{'':66} {'median':>10} {'min-max':>19} {'hand-off':>9}")
for name, d in rows:
    if not d: continue
    v = [d[r][0] for r in sorted(d)]
    h = [d[r][1] for r in sorted(d)]
    print(f"{name:66} {st.median(v)/1e6:8.2f} M {min(v)/1e6:8.2f}-{max(v)/1e6:<8.2f} {st.median(h):7.0f} ns")
def ratio(a, b):
    common = sorted(set(a) & set(b))
    return st.median([a[r][0] / b[r][0] for r in common]) if common else float("nan")
g = shm.get("throughput-1to4groups/shmbus/64", {})
print()
print(f"shmbus 1->4 groups / iceoryx2 1->4 busy-poll, per subscriber, paired rounds: {ratio(g, ice.get(('ice-spin','1to4'),{})):.2f}x")
print(f"shmbus 1->4 groups / iceoryx2 1->4 yielding, per subscriber, paired rounds: {ratio(g, ice.get(('ice-yield','1to4'),{})):.2f}x")
def per_round(a, b):
    return " ".join(f"{a[r][0] / b[r][0]:.2f}" for r in sorted(set(a) & set(b)))
print(f"  per round: {per_round(g, ice.get(('ice-yield','1to4'),{}))}")
gs = shm.get("throughput-1to4groups-sleep50us/shmbus/64", {})
print(f"shmbus 1->4 groups / iceoryx2 1->4 sleeping 50 us, per subscriber, paired rounds: {ratio(gs, ice.get(('ice-sleep','1to4'),{})):.2f}x")
print(f"  per round: {per_round(gs, ice.get(('ice-sleep','1to4'),{}))}")
print(f"shmbus 1->1 / iceoryx2 1->1, paired rounds: {ratio(shmbus, ice.get(('ice-spin','1to1'),{})):.2f}x")
if paused:
    print(f"shmbus 1->1 with the receiver pausing / iceoryx2 1->1, paired rounds: {ratio(paused, ice.get(('ice-spin','1to1'),{})):.2f}x")
import os
if os.path.exists(f"{out}/floor"):
    fl = {}
    for line in open(f"{out}/floor"):
        f = line.split()
        fl.setdefault(f[1], {})[int(f[0])] = (float(re.search(r"rate=([0-9.]+)", line).group(1)), float("nan"))
    b32 = shm.get("throughput-batch32/shmbus/64/header", {})
    for v, name in (("A", "bench-floor A (one message per operation)"), ("C", "bench-floor C (batches of 32)")):
        d = fl.get(v, {})
        if d:
            print(f"{name}: median {st.median(x[0] for x in d.values())/1e6:.2f} M")
    print(f"shmbus 1->1 / bench-floor A, paired rounds: {ratio(shmbus, fl.get('A', {})):.3f}x")
    if paused:
        print(f"shmbus 1->1 with the receiver pausing / bench-floor A, paired rounds: {ratio(paused, fl.get('A', {})):.3f}x")
    print(f"shmbus batches of 32 / bench-floor C, paired rounds: {ratio(b32, fl.get('C', {})):.3f}x")
    print(f"shmbus batches of 32 / iceoryx2 1->1, paired rounds: {ratio(b32, ice.get(('ice-spin','1to1'),{})):.2f}x")
print(f"tap draining / 1->1 alone: {ratio(shm.get('throughput-with-tap/shmbus/64',{}), shmbus):.2f}x; stopped tap / 1->1 alone: {ratio(shm.get('throughput-with-stopped-tap/shmbus/64',{}), shmbus):.2f}x")
PY
