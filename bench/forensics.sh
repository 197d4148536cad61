#!/bin/bash
# forensics.sh BIN STORE_ROOT [REPS]
#
# Times the forensic queries of issue #25 on a store (a root holding nix/,
# e.g. made by `mkstore.py --paths 150000 --files 1 --size 200 --dup 0.5
# --seed 9 --roots 200`, 315k paths): `roots why` of a path deep in the
# graph and of a dead one, `roots why --all`, and `roots size` over every
# root and profile generation, each REPS times (default 3) with the page
# cache warm (one untimed run first). Prints wall time and peak RSS
# (/usr/bin/time's maximum resident set) per run. Read-only: the store
# is not changed. Targets: why < 2 s, size < 10 s, peak RSS < 400 MB.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: forensics.sh BIN STORE_ROOT [REPS]" >&2; exit 2; }
BIN=$(readlink -f "$1"); R=$(readlink -f "$2"); REPS=${3:-3}
[ -d "$R/nix/store" ] || { echo "forensics.sh: $R/nix/store is not a directory" >&2; exit 2; }
DB=$R/nix/var/nix/db/db.sqlite
# A path with referrers but no root of its own (the deepest-named
# reference target), and a dead path if there is one.
LIVE=$(sqlite3 -readonly "$DB" "select v.path from ValidPaths v join Refs r on r.reference = v.id group by v.id order by count(*) desc limit 1")
echo "paths: $(sqlite3 -readonly "$DB" 'select count(*) from ValidPaths'), refs: $(sqlite3 -readonly "$DB" 'select count(*) from Refs')"
timed() { # LABEL ARGS...
	local label=$1; shift
	"$BIN" --store "$R" "$@" > /dev/null 2>&1 || true # warm
	for i in $(seq "$REPS"); do
		/usr/bin/time -f "$label %e s  %M KB" "$BIN" --store "$R" "$@" > /dev/null 2>/tmp/forensics.$$ || { cat /tmp/forensics.$$ >&2; }
		tail -1 /tmp/forensics.$$
	done
	rm -f /tmp/forensics.$$
}
echo "why of $LIVE"
timed "why" roots why "$LIVE"
timed "why --all" roots why --all "$LIVE"
timed "why --json" --json roots why "$LIVE"
timed "size" roots size
timed "size --json" --json roots size
