#!/usr/bin/env bash
# One-way latency (busy-polling receiver, 8 B / 64 B / 4 KiB), iceoryx2
# against shmbus, alternated quickly so that each pair is measured within
# about a second (these VMs switch between cache-line hand-off states from
# one second to the next):
#   peers/latency.sh [ROUNDS (20)]   (from the repository root, after
#   cargo build --release -p bus-daemon -p bus-cli and the peers build in peers/README.md)
# Each round runs shmbus at 8 B, iceoryx2 (all three sizes), shmbus at 64 B,
# then at 4 KiB, each shmbus run on a daemon sized for its own body. A
# round's iceoryx2 figures count only when the shmbus runs just before and
# after it measured a near hand-off (probe < NEAR ns, default 150), as
# shmbus's own figures do; ratios are medians of per-round ratios.
# A failed run is reported on stderr and leaves its cells empty.
set -uo pipefail
rounds=${1:-20}
ice=./target/peers/release/iceoryx2-bench
shm=./target/release/shmbus
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Each shmbus run starts a daemon of its own, with slots sized for its body,
# only when none answers on the default socket (one that does would be used
# as it is, 4 KiB bodies not fitting its slots).
unset SHMBUS_SOCKET SHMBUS_BUS
if "$shm" status >/dev/null 2>&1; then
  echo "a shmbus daemon answers on the default socket: stop it first (each size needs a daemon of its own)" >&2
  exit 1
fi
shm_run() { # shm_run SIZE ROUND
  "$shm" bench --only latency --sizes "$1" --reps 1 --json 2>"$out/err" > "$out/shm$1-$2.json" \
    || { echo "round $2: shmbus at $1 B failed: $(tail -1 "$out/err")" >&2; echo '[]' > "$out/shm$1-$2.json"; }
}
for r in $(seq "$rounds"); do
  echo "round $r" >&2
  shm_run 8 "$r"
  "$ice" --latency --rounds 1 --no-probe 2>"$out/err" | grep '^latency' | sed "s/round=1/round=$r/" >> "$out/ice" \
    || echo "round $r: iceoryx2 failed: $(tail -1 "$out/err")" >&2
  shm_run 64 "$r"
  shm_run 4096 "$r"
done
python3 - "$out" "$rounds" "${NEAR:-150}" <<'PY'
import json, sys, statistics as st
out, rounds, near = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ice = {}
for line in open(f"{out}/ice") if __import__("os").path.exists(f"{out}/ice") else []:
    kv = dict(x.split("=") for x in line.split()[1:])
    ice.setdefault(int(kv["size"]), {})[int(kv["round"])] = float(kv["p50_ns"])
shm, probe = {}, {}
for r in range(1, rounds + 1):
    for size in (8, 64, 4096):
        for m in json.load(open(f"{out}/shm{size}-{r}.json")):
            if m["name"] == f"latency/shmbus/{size}/busy":
                shm.setdefault(size, {})[r] = m["p50_ns"]
                probe[(r, size)] = m["handoff_ns"]
for r in range(1, rounds + 1):
    cells = "  ".join(f"{s} B: iceoryx2 {ice.get(s, {}).get(r, float('nan')):.0f} shmbus {shm.get(s, {}).get(r, float('nan')):.0f} (probe {probe.get((r, s), float('nan')):.0f})" for s in (8, 64, 4096))
    print(f"round {r:2}  {cells}")
ok_ice = [r for r in range(1, rounds + 1) if probe.get((r, 8), 1e9) < near and probe.get((r, 64), 1e9) < near]
print(f"\nnear rounds (probe < {near:.0f} ns before and after iceoryx2's run): {len(ok_ice)} of {rounds}")
print(f"{'one-way p50, busy-polling receiver':40} {'size':>5} {'iceoryx2':>9} {'shmbus':>9} {'shmbus/iceoryx2':>16}")
for s in (8, 64, 4096):
    rs = [r for r in ok_ice if probe.get((r, s), 1e9) < near and r in ice.get(s, {}) and r in shm.get(s, {})]
    if not rs:
        print(f"{'':40} {s:5}  no near round")
        continue
    ratio = st.median(shm[s][r] / ice[s][r] for r in rs)
    print(f"{'':40} {s:5} {st.median(ice[s][r] for r in rs):7.0f}ns {st.median(shm[s][r] for r in rs):7.0f}ns {ratio:15.2f}x  ({len(rs)} rounds, range {min(shm[s][r] / ice[s][r] for r in rs):.2f}-{max(shm[s][r] / ice[s][r] for r in rs):.2f})")
PY
