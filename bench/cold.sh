#!/bin/bash
# cold.sh ROOT CMD [ARGS...]
#
# Runs CMD once on a cold page cache with ROOT/nix bind-mounted on /nix (a
# private mount namespace), and prints its wall, user and system time and
# what it read from the disk under ROOT: read requests, requests merged
# into others, MiB and the mean request size. Needs root (drop_caches,
# mount namespaces).
#
# Why: on the development VM, DAMON reclaim pages out file data idle for a
# minute, so compare.py's second copy is read partly cold and a single
# pair moves by 2x. A cold cache is the reproducible end of that range,
# and the request counts show where the time goes: the virtual disk
# serves about 24k 4 KiB requests a second however deep the queue, and an
# audit of a 63k-path store makes ~170k of them for metadata alone.
#
# Example: sudo bench/cold.sh /srv/s30k bin/storekeeper verify --check-contents
#          sudo bench/cold.sh /srv/s30k nix-store --verify --check-contents
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: cold.sh ROOT CMD [ARGS...]" >&2; exit 2; }
ROOT=$(readlink -f "$1"); shift
[ -d "$ROOT/nix/store" ] || { echo "cold.sh: $ROOT/nix/store is not a directory" >&2; exit 2; }
dev=$(basename "$(findmnt -no SOURCE --target "$ROOT")")
reads() { awk -v d="$dev" '$3==d {print $4, $5, $6}' /proc/diskstats; }
[ -n "$(reads)" ] || { echo "cold.sh: no disk statistics for $dev" >&2; exit 2; }

sync
echo 3 > /proc/sys/vm/drop_caches
HERE=$(dirname "$(readlink -f "$0")")
r0=$(reads)
TIMEFORMAT='%R s wall %U user %S sys'
{ time "$HERE/inroot.sh" "$ROOT" "$@" > /dev/null 2>&1 || echo "cold.sh: '$*' exited with status $?" >&2; } 2>&1
r1=$(reads)
echo "$r0 $r1" | awk '{ n = $4 - $1; printf "disk: %d read requests, %d merged, %.0f MiB, %.1f KiB a request\n", n, $5 - $2, ($6 - $3) / 2048, n ? ($6 - $3) / 2 / n : 0 }'
