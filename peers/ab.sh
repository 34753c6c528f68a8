#!/usr/bin/env bash
# A/B of two or more builds of `shmbus`, interleaved round by round, so that
# every ratio compares runs a few seconds apart (these VMs drift between
# cache-line hand-off states from minute to minute):
#   peers/ab.sh ROUNDS path/to/shmbus-A path/to/shmbus-B [...]
# Copy each build's target/release/shmbus aside first (the peers are the
# binary itself, so each build measures its own receive side too). Each
# round runs `shmbus bench --only throughput --sizes 64 --reps 1 --json` of
# every binary, in the order given in odd rounds and the reverse in even
# ones. Prints every run with its probe, then, per measurement, the
# median of each binary over the runs in the near state (probe < NEAR ns,
# default 150), and the median of the per-round ratios to the first binary
# over the rounds where both ran in that state.
set -euo pipefail
rounds=${1:?rounds}; shift
[ $# -ge 2 ] || { echo "usage: peers/ab.sh ROUNDS BIN-A BIN-B [...]" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
bins=("$@")
for r in $(seq "$rounds"); do
  # Odd rounds run the binaries in the order given, even rounds in the
  # reverse order, so that a drift within a round favours neither.
  order=$(seq 0 $((${#bins[@]} - 1)))
  [ $((r % 2)) -eq 0 ] && order=$(echo "$order" | tac)
  for i in $order; do
    timeout 120 "${bins[$i]}" bench --only throughput --sizes 64 --reps 1 --json 2>/dev/null > "$out/$r.$i.json" || true
  done
done
python3 - "$out" "$rounds" "${NEAR:-150}" "$@" <<'PY'
import json, os, sys, statistics as st
out, rounds, near, bins = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
runs = {}  # (round, bin) -> {name: (rate, probe)}
for r in range(1, rounds + 1):
    for i in range(len(bins)):
        path = f"{out}/{r}.{i}.json"
        if os.path.getsize(path) == 0:
            continue
        runs[(r, i)] = {m["name"]: (m["msgs_per_sec"] / 1e6, m["handoff_ns"]) for m in json.load(open(path))}
names = sorted({n for v in runs.values() for n in v})
for (r, i), v in sorted(runs.items()):
    cells = " ".join(f"{n.replace('throughput', 'tp')}={v[n][0]:.2f}M({v[n][1]:.0f}ns)" for n in names if n in v)
    print(f"round {r} bin {i}: {cells}")
print(f"\nnear state: probe < {near:.0f} ns; bins: " + ", ".join(f"{i}={b}" for i, b in enumerate(bins)))
for n in names:
    meds = []
    for i in range(len(bins)):
        xs = [v[n][0] for (r, j), v in runs.items() if j == i and n in v and v[n][1] < near]
        meds.append(f"{st.median(xs):.2f} M/s (n={len(xs)})" if xs else "-")
    ratios = []
    for i in range(1, len(bins)):
        rs = [runs[(r, i)][n][0] / runs[(r, 0)][n][0] for r in range(1, rounds + 1)
              if (r, 0) in runs and (r, i) in runs and n in runs[(r, 0)] and n in runs[(r, i)]
              and runs[(r, 0)][n][1] < near and runs[(r, i)][n][1] < near]
        ratios.append(f"{st.median(rs):.2f}x (n={len(rs)})" if rs else "-")
    print(f"{n:45} " + " | ".join(meds) + "   ratio to bin 0: " + " | ".join(ratios))
PY
