#!/bin/bash
# versus.sh BIN TEMPLATE WORK [REPS]
#
# Measures `BIN verify --check-contents` and `BIN optimise` against real
# Nix (`nix-store --verify --check-contents`, `nix-store --optimise`) and
# against the read floor of issue #5 (`find -type f | xargs -P2 cat`), on
# copies of one store, each first run followed by a second run on the same
# copy. TEMPLATE is a root holding nix/ (a store made by Nix or by
# mkstore.py); WORK is scratch space for a copy of it. Needs root
# (private mount namespaces), nix-bin and Go (to build bench/readfloor).
#
# Each side gets a fresh copy that is synced and left to settle first: the
# copy's writeback and the discards of the previous copy's deletion
# otherwise land in the run, and they steal CPU (a 2-core VM: Nix's verify
# took 12 s to 33 s on one store under compare.py). Nix and BIN alternate
# which goes first. It prints each run and the sums
# over all repetitions with their ratios.
#
# The floor is measured as the issue defines it, and also with
# bench/readfloor (two readers, each reusing one buffer): GNU cat maps and
# unmaps a buffer per file, and where an unmap costs a TLB shootdown
# across CPUs (virtual machines) that, not the reading, is most of its
# time.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
[ $# -ge 3 ] || { echo "usage: versus.sh BIN TEMPLATE WORK [REPS]" >&2; exit 2; }
BIN=$(readlink -f "$1"); T=$(readlink -f "$2"); W=$3; REPS=${4:-1}
[ -d "$T/nix/store" ] || { echo "versus.sh: $T/nix/store is not a directory" >&2; exit 2; }
command -v nix-store >/dev/null || { echo "versus.sh: needs nix-store (apt-get install nix-bin)" >&2; exit 2; }

inroot() { "$HERE/inroot.sh" "$@"; }
now() { date +%s.%N; }
# timed VAR CMD...: run CMD (output discarded; a failure is reported on
# stderr), its wall time in seconds in VAR.
timed() {
	local var=$1 t0; shift
	t0=$(now)
	"$@" > /dev/null 2>&1 || echo "versus.sh: '$*' exited with status $?" >&2
	printf -v "$var" '%.2f' "$(echo "$(now) - $t0" | bc)"
}
# fresh SIDE: a new copy of the template at $W/SIDE, synced and settled.
# Made just before it is used: some machines page out file data idle for
# a minute (DAMON reclaim), and a copy left waiting would be read cold.
fresh() {
	rm -rf "${W:?}/$1"; mkdir -p "$W"
	cp -a "$T" "$W/$1"
	sync; sleep 15
}
readall() { find "$1" -type f -print0 | xargs -0 -P2 cat > /dev/null; }
# readbuf DIR: every file read once by two readers reusing one buffer each.
readbuf() { "$READFLOOR" -j 2 "$1"; }

READFLOOR=$(mktemp)
trap 'rm -f "$READFLOOR"' EXIT
(cd "$(dirname "$0")/.." && go build -o "$READFLOOR" ./bench/readfloor)

declare -A sum
add() { sum[$1]=$(echo "${sum[$1]:-0} + $2" | bc); }
for rep in $(seq 1 "$REPS"); do
	fresh floor
	timed fc readall "$W/floor/nix/store"
	timed fb readbuf "$W/floor/nix/store"
	rm -rf "${W:?}/floor"
	echo "rep $rep: read floor: xargs -P2 cat ${fc} s, two buffered readers ${fb} s"
	add floor-cat "$fc"; add floor-buf "$fb"
	for op in verify optimise; do
		case $op in
		verify) nixcmd=(nix-store --verify --check-contents); tool=("$BIN" verify --check-contents) ;;
		optimise) nixcmd=(nix-store --optimise); tool=("$BIN" optimise) ;;
		esac
		nix_side() { fresh nix; timed n1 inroot "$W/nix" "${nixcmd[@]}"; sync; sleep 5; timed n2 inroot "$W/nix" "${nixcmd[@]}"; rm -rf "${W:?}/nix"; }
		tool_side() { fresh tool; timed t1 inroot "$W/tool" "${tool[@]}"; sync; sleep 5; timed t2 inroot "$W/tool" "${tool[@]}"; rm -rf "${W:?}/tool"; }
		if [ $((rep % 2)) -eq 1 ]; then nix_side; tool_side; order="nix first"
		else tool_side; nix_side; order="tool first"; fi
		echo "rep $rep $op ($order): nix ${n1} s then ${n2} s; tool ${t1} s then ${t2} s"
		add "$op-nix1" "$n1"; add "$op-nix2" "$n2"; add "$op-tool1" "$t1"; add "$op-tool2" "$t2"
	done
done
rm -rf "$W"
r() { echo "scale=2; $1 / $2" | bc; }
echo "total over $REPS: floor: cat ${sum[floor-cat]} s, buffered ${sum[floor-buf]} s"
for op in verify optimise; do
	echo "$op: first run nix ${sum[$op-nix1]} s, tool ${sum[$op-tool1]} s: $(r "${sum[$op-nix1]}" "${sum[$op-tool1]}")x;" \
		"second run nix ${sum[$op-nix2]} s, tool ${sum[$op-tool2]} s: $(r "${sum[$op-nix2]}" "${sum[$op-tool2]}")x"
done
echo "verify first run / floor: cat $(r "${sum[verify-tool1]}" "${sum[floor-cat]}"), buffered $(r "${sum[verify-tool1]}" "${sum[floor-buf]}")"
