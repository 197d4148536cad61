#!/bin/bash
# verify27.sh [--cold] BIN ROOT [PAIRS]
#
# Issue #27's benchmark: `BIN verify --check-contents` side by side with
# Nix 2.8's threaded `nix store verify --all --no-trust` on the store at
# ROOT (a root holding nix/: bench/mkrealstore.sh's store of real
# binaries, or a mkstore.py store), page cache warm, alternating which
# goes first, PAIRS pairs (default 3) of each:
#   no-record: BIN with --no-record against Nix;
#   record:    BIN's first run that records manifests (its state
#              directory, ROOT/nix/var/storekeeper, removed before each
#              run; nothing else of ROOT changes) against Nix.
# Then the CPU floor (bench/readfloor -floor: the time to read every file
# with as many readers as cores, plus SHA-256 of every byte on all cores,
# plus BLAKE3 for the recording run, at this machine's measured rates)
# and, with --cold, one run of each side after `echo 3 >
# /proc/sys/vm/drop_caches` (bench/cold.sh). Every command runs through
# bench/inroot.sh (ROOT/nix on /nix); each line gives wall, user and
# system seconds and cores busy; the summary gives medians and ratios
# (Nix / BIN: above 1 is BIN ahead). Needs root, nix-bin and Go.
#
# Run it on a quiet machine (uptime's load below 1): two cores shared
# with anything else measure the sharing. Some machines page out file
# data idle for a minute (DAMON reclaim), so each store is read once,
# untimed, right before its pairs.
#
# Example: sudo bench/verify27.sh --cold bin/storekeeper /srv/real27 3
set -euo pipefail
cold=
if [ "${1:-}" = --cold ]; then cold=1; shift; fi
[ $# -ge 2 ] || { echo "usage: verify27.sh [--cold] BIN ROOT [PAIRS]" >&2; exit 2; }
BIN=$(readlink -f "$1"); ROOT=$(readlink -f "$2"); PAIRS=${3:-3}
[ -d "$ROOT/nix/store" ] || { echo "verify27.sh: $ROOT/nix/store is not a directory" >&2; exit 2; }
command -v nix >/dev/null || { echo "verify27.sh: needs nix (apt-get install nix-bin)" >&2; exit 2; }
HERE=$(dirname "$(readlink -f "$0")")
STATE=$ROOT/nix/var/storekeeper

READFLOOR=$(mktemp)
OUT=$(mktemp -d)
trap 'rm -rf "$READFLOOR" "$OUT"' EXIT
(cd "$HERE/.." && go build -o "$READFLOOR" ./bench/readfloor)

nixcmd=(nix --extra-experimental-features nix-command store verify --all --no-trust)
# run NAME CMD...: one timed run through inroot.sh, its line appended to
# $OUT/NAME ("wall user sys busy%"); a failure is reported on stderr.
run() {
	local name=$1; shift
	/usr/bin/time -o "$OUT/t" -f '%e %U %S %P' "$HERE/inroot.sh" "$ROOT" "$@" >/dev/null 2>"$OUT/err" ||
		{ echo "verify27.sh: '$*' exited with status $? ($(tail -1 "$OUT/err"))" >&2; }
	cat "$OUT/t" >> "$OUT/$name"
	printf '  %-9s %s\n' "$name" "$(awk '{printf "%.2f s  %.2f u %.2f s  %s", $1, $2, $3, $4}' "$OUT/t")"
}
nix_run() { run "nix-$1" "${nixcmd[@]}"; }
tool_run() {
	if [ "$1" = record ]; then
		rm -rf "$STATE"
		run tool-record "$BIN" verify --check-contents
	else
		run tool-norec "$BIN" verify --check-contents --no-record
	fi
}

echo "== $ROOT: $(find "$ROOT/nix/store" -maxdepth 1 -mindepth 1 | wc -l) entries; load $(cut -d' ' -f1 /proc/loadavg)"
"$HERE/inroot.sh" "$ROOT" "${nixcmd[@]}" >/dev/null 2>&1 || true # warm, untimed
"$HERE/inroot.sh" "$ROOT" "$BIN" verify --check-contents --no-record >/dev/null 2>&1 || true
for mode in norec record; do
	echo "$mode:"
	for i in $(seq 1 "$PAIRS"); do
		if [ $((i % 2)) = 1 ]; then nix_run "$mode"; tool_run "$mode"; else tool_run "$mode"; nix_run "$mode"; fi
	done
done
rm -rf "$STATE"

echo "floor:"
"$READFLOOR" -floor -j "$(nproc)" "$ROOT/nix/store" | tee "$OUT/floor" | sed 's/^/  /'

if [ -n "$cold" ]; then
	echo "cold:"
	for side in nix tool; do
		if [ $side = nix ]; then c=("${nixcmd[@]}"); else c=("$BIN" verify --check-contents --no-record); fi
		printf '  %-9s ' "$side"; "$HERE/cold.sh" "$ROOT" "${c[@]}" | tr '\n' ' '; echo
	done
fi

med() { sort -n "$OUT/$1" | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
floor=$(awk '/^floor:/ {print $2}' "$OUT/floor")
floorrec=$(awk '/^floor:/ {for (i=1;i<=NF;i++) if ($i=="manifests") print $(i+1)}' "$OUT/floor")
for mode in norec record; do
	n=$(med "nix-$mode"); t=$(med "tool-$mode")
	f=$floor; [ $mode = record ] && f=$floorrec
	awk -v m=$mode -v n="$n" -v t="$t" -v f="$f" 'BEGIN {
		printf "median %-6s nix %.2f s, storekeeper %.2f s: %.2fx Nix; %.2fx the floor (%.2f s)\n", m, n, t, n/t, t/f, f }'
done
