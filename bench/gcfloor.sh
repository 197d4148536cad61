#!/bin/bash
# gcfloor.sh BIN TEMPLATE WORK [REPS]
#
# Measures a full `BIN gc` against its floor: deleting the same dead paths
# with `xargs -P2 rm -rf`, as issue #3 defines it. TEMPLATE is a root
# holding nix/ (a store made by Nix or by mkstore.py); WORK is scratch space
# for two copies of it. Needs root (private mount namespaces).
#
# Each repetition copies the template twice, syncs and lets the disk
# settle, then runs the floor and the collector one after the other,
# alternating which goes first: on disks with an I/O budget (cloud volumes,
# rate-limited VMs) whichever runs second pays for the first one's
# writeback, which skews a single ordered pair by 30% or more. It prints
# each run, then the sums over all repetitions and their ratio, the share
# of the collector's time spent holding gc.lock and its peak memory.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
[ $# -ge 3 ] || { echo "usage: gcfloor.sh BIN TEMPLATE WORK [REPS]" >&2; exit 2; }
BIN=$(readlink -f "$1"); T=$(readlink -f "$2"); W=$3; REPS=${4:-2}
[ -d "$T/nix/store" ] || { echo "gcfloor.sh: $T/nix/store is not a directory" >&2; exit 2; }

# inroot ROOT CMD...: run CMD with ROOT/nix mounted on /nix.
inroot() { "$HERE/inroot.sh" "$@"; }
now() { date +%s.%N; }

floor_sum=0; tool_sum=0; lock_sum=0
for rep in $(seq 1 "$REPS"); do
	rm -rf "$W"; mkdir -p "$W"
	cp -a "$T" "$W/floor"; cp -a "$T" "$W/tool"
	sync; sleep 10
	inroot "$W/floor" "$BIN" gc --print-dead | sed "s|^/nix/store/|$W/floor/nix/store/|" > "$W/dead"
	floor() {
		local t0; t0=$(now)
		xargs -P2 -n 200 rm -rf < "$W/dead"
		f=$(echo "$(now) - $t0" | bc)
	}
	tool() {
		local t0; t0=$(now)
		/usr/bin/time -f "%M" -o "$W/rss" "$HERE/inroot.sh" "$W/tool" "$BIN" gc --json > "$W/gc.json"
		g=$(echo "$(now) - $t0" | bc)
		l=$(python3 -c "import json; print(json.load(open('$W/gc.json'))['result']['lock_held_seconds'])")
	}
	if [ $((rep % 2)) -eq 1 ]; then floor; sync; sleep 5; tool; order="floor first"
	else tool; sync; sleep 5; floor; order="gc first"; fi
	printf 'rep %d (%s): %d dead paths, floor %.1f s, gc %.1f s (gc.lock %.1f s), peak %d MiB\n' \
		"$rep" "$order" "$(wc -l < "$W/dead")" "$f" "$g" "$l" "$(( $(cat "$W/rss") / 1024 ))"
	floor_sum=$(echo "$floor_sum + $f" | bc); tool_sum=$(echo "$tool_sum + $g" | bc); lock_sum=$(echo "$lock_sum + $l" | bc)
	rm -rf "$W"
done
printf 'total: floor %.1f s, gc %.1f s: gc/floor %.2f; gc.lock held %.1f%% of the gc time\n' \
	"$floor_sum" "$tool_sum" "$(echo "$tool_sum / $floor_sum" | bc -l)" "$(echo "100 * $lock_sum / $tool_sum" | bc -l)"
