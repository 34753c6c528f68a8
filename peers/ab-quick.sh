#!/usr/bin/env bash
# A/B of shmbus builds on the first three throughput rows only (1 -> 1 with
# the header touched, 1 -> 1 with the whole body, batches of 32), with
# bench-floor A and C in every round:
#   FLOOR=/tmp/bench-floor/release/bench-floor peers/ab-quick.sh ROUNDS BIN-A BIN-B [...]
# For benchmark-only ablations that are correct for one producer and one
# consumer only: each `shmbus bench --only throughput --sizes 64 --reps 1`
# is stopped once its fourth row (the Unix socket's) begins. Odd rounds run the
# binaries in the order given, even rounds in the reverse order. Prints,
# per row, each binary's median over the runs that probed under NEAR ns
# (default 150), the median of the per-round ratios to the first binary
# (rounds where both probed near), and the ratio to the floor in rounds
# where the floor read its near state: A at least FLOOR_A_NEAR M/s
# (default 15), C at least FLOOR_C_NEAR M/s (default 40); the floor has no
# probe of its own.
# With REPS=N (default 1), each `shmbus bench` runs N rounds and only the
# rows of its last round count: builds before ac42cd8 measured their first
# round 1.3-1.8x lower than the later ones (a new bus's free slots in index
# order; BENCHMARKS.md, sessions 17 and 18), and bench-floor measures after
# a 0.5 s warm-up. REPS above 1 runs the whole
# first round, 4 -> 1 and fan-out included: for product builds only, not
# for the one-producer ablations.
set -euo pipefail
rounds=${1:?rounds}; shift
reps=${REPS:-1}
[ $# -ge 2 ] || { echo "usage: peers/ab-quick.sh ROUNDS BIN-A BIN-B [...]" >&2; exit 2; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for r in $(seq "$rounds"); do
  bins=("$@")
  [ $((r % 2)) -eq 0 ] && mapfile -t bins < <(printf '%s\n' "$@" | tac)
  for b in "${bins[@]}"; do
    # Each run in the background, so that only it is stopped (by its pid)
    # once its fourth row begins, or after 60 s.
    run=$(mktemp)
    "$b" bench --only throughput --sizes 64 --reps "$reps" > "$run" 2>&1 &
    pid=$!
    for _ in $(seq $((600 * reps))); do
      kill -0 "$pid" 2>/dev/null || break
      grep -q "round $reps throughput/uds" "$run" && break
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    grep -E "round $reps throughput(-batch32)?/shmbus/64/" "$run" | sed "s|^|$r $b |" >> "$out" || true
    rm -f "$run"
  done
  if [ -n "${FLOOR:-}" ]; then
    for v in A C; do echo "$r floor$v $("$FLOOR" "$v" 2>&1 | tail -1)" >> "$out"; done
  fi
done
python3 - "$out" "${NEAR:-150}" "${FLOOR_A_NEAR:-15}" "${FLOOR_C_NEAR:-40}" "$@" <<'PY'
import re, sys, statistics as st, collections
path, near, bins = sys.argv[1], float(sys.argv[2]), sys.argv[5:]
floor_near = {'A': float(sys.argv[3]), 'C': float(sys.argv[4])}
runs = collections.defaultdict(dict)   # (round, row) -> bin -> (M/s, probe)
floor = collections.defaultdict(dict)  # round -> variant -> M/s
for line in open(path):
    m = re.match(r'(\d+) (\S+) \[\d+/\d+\] round \d+ (\S+): ([\d.]+) M msg/s.*hand-off (\d+) ns', line)
    row = m and {'throughput/shmbus/64/header': 1, 'throughput/shmbus/64/full': 2,
                 'throughput-batch32/shmbus/64/header': 3}.get(m[3])
    if row:
        runs[(int(m[1]), row)][m[2]] = (float(m[4]), float(m[5]))
        print(line.rstrip())
    m = re.match(r'(\d+) floor(\w) .*rate=(\d+)', line)
    if m:
        floor[int(m[1])][m[2]] = int(m[3]) / 1e6
        print(line.rstrip())
rounds = sorted({r for r, _ in runs})
for row, name, fv in ((1, '1 -> 1, header', 'A'), (2, '1 -> 1, whole body', 'A'), (3, 'batches of 32', 'C')):
    print(f"\n{name}:")
    for b in bins:
        near_runs = [runs[(r, row)][b][0] for r in rounds if b in runs[(r, row)] and runs[(r, row)][b][1] < near]
        ratios = [runs[(r, row)][b][0] / runs[(r, row)][bins[0]][0] for r in rounds
                  if b in runs[(r, row)] and bins[0] in runs[(r, row)]
                  and runs[(r, row)][b][1] < near and runs[(r, row)][bins[0]][1] < near]
        fl = [runs[(r, row)][b][0] / floor[r][fv] for r in rounds
              if b in runs[(r, row)] and runs[(r, row)][b][1] < near and floor[r].get(fv, 0) >= floor_near[fv]]
        med = f"{st.median(near_runs):.2f} M/s (n={len(near_runs)})" if near_runs else "-"
        rat = f"{st.median(ratios):.2f}x (n={len(ratios)})" if ratios else "-"
        flr = f"{st.median(fl):.3f}x (n={len(fl)})" if fl else "-"
        print(f"  {b}: {med}; to bin 0: {rat}; to floor {fv}: {flr}")
PY
