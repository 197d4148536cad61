#!/bin/bash
# register.sh BIN TEMPLATE WORK [REPS]
#
# Measures `BIN register` against real Nix's `nix-store --register-validity`
# on the same input (issue #24): one copy of TEMPLATE (a root holding nix/,
# a store made by Nix or by mkstore.py) at WORK/r, its registration dumped
# once with `nix-store --dump-db`, then, for each repetition and for both
# forms of the input (without hashes: each side canonicalises and hashes
# every path; with --hash-given: each side checks the trees and, for BIN,
# hashes them to compare), the database is reset to an empty one made by
# `nix-store --init` and each side registers the whole store. Nix and BIN
# alternate which goes first. After every run the rows (ValidPaths but id
# and registrationTime, Refs by path, DerivationOutputs by path) are
# compared with the ones Nix wrote: a difference stops the script.
#
# The floors: every file of the store read once by two readers
# (bench/readfloor), and the lock protocol's files alone (one
# "<path>.lock" created, locked and deleted per path, one at a time: the
# store directory's lock serialises creations anyway). Needs root (private mount namespaces), nix-bin,
# sqlite3 and Go.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
[ $# -ge 3 ] || { echo "usage: register.sh BIN TEMPLATE WORK [REPS]" >&2; exit 2; }
BIN=$(readlink -f "$1"); T=$(readlink -f "$2"); W=$3; REPS=${4:-3}
[ -d "$T/nix/store" ] || { echo "register.sh: $T/nix/store is not a directory" >&2; exit 2; }
for c in nix-store sqlite3 go bc; do
	command -v $c >/dev/null || { echo "register.sh: needs $c" >&2; exit 2; }
done
inroot() { "$HERE/inroot.sh" "$@"; }
now() { date +%s.%N; }

mkdir -p "$W"; W=$(readlink -f "$W")
R=$W/r
rm -rf "$R"; cp -a "$T" "$R"
DB=$R/nix/var/nix/db
inroot "$R" nix-store --dump-db > "$W/dump-hash"
# The same records without hash and size (the second and third line).
/usr/bin/env python3 - "$W/dump-hash" "$W/dump-nohash" <<'EOF'
import sys
lines = open(sys.argv[1]).read().split('\n')
out, i = [], 0
while i < len(lines) and lines[i]:
    out.append(lines[i]); i += 3
    n = int(lines[i + 1]); out += lines[i:i + 2 + n]; i += 2 + n
open(sys.argv[2], 'w').write('\n'.join(out) + '\n')
EOF
NPATHS=$(sqlite3 "$DB/db.sqlite" "select count(*) from ValidPaths")
rm -rf "$DB"; inroot "$R" nix-store --init; cp -a "$DB" "$W/db-empty"

rows() {
	sqlite3 "$DB/db.sqlite" "select path, hash, narSize, coalesce(deriver,''), coalesce(ultimate,''), coalesce(sigs,''), coalesce(ca,'') from ValidPaths order by path;
		select a.path, b.path from Refs r join ValidPaths a on a.id = r.referrer join ValidPaths b on b.id = r.reference order by 1, 2;
		select v.path, o.id, o.path from DerivationOutputs o join ValidPaths v on v.id = o.drv order by 1, 2;"
}
reset() { rm -rf "$DB"; cp -a "$W/db-empty" "$DB"; sync; sleep 3; }
# timed VAR INPUT CMD...: CMD in the root with INPUT on stdin, its wall
# time in VAR; a failure stops the script.
timed() {
	local var=$1 in=$2 t0; shift 2
	t0=$(now)
	inroot "$R" "$@" < "$in" > "$W/out" 2>&1 || { echo "register.sh: '$*' failed:" >&2; tail -5 "$W/out" >&2; exit 1; }
	printf -v "$var" '%.2f' "$(echo "$(now) - $t0" | bc)"
}

READFLOOR=$W/readfloor
(cd "$HERE/.." && go build -o "$READFLOOR" ./bench/readfloor)
declare -A sum
add() { sum[$1]=$(echo "${sum[$1]:-0} + $2" | bc); }
# lockfloor: the lock protocol's own cost: one "<path>.lock" per path
# created and flock'ed in the store directory, all of them existing at
# once (the directory grows by as many entries), then each unlinked and
# marked, as PathLocks does for every path it registers (Nix's
# register-validity takes no locks).
lockfloor() {
	/usr/bin/env python3 - "$R/nix/store" "$NPATHS" <<'PYEOF'
import fcntl, os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
t = time.time()
fds = []
names = ['zz-lockfloor-%08d.lock' % i for i in range(n)]
for name in names:
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
for name in names:
    fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    os.unlink(name, dir_fd=dfd)
    os.write(fd, b'd')
    os.close(fd)
print('%.2f' % (time.time() - t))
PYEOF
}
for rep in $(seq 1 "$REPS"); do
	t0=$(now); "$READFLOOR" -j 2 "$R/nix/store" > /dev/null
	printf -v fl '%.2f' "$(echo "$(now) - $t0" | bc)"; add floor "$fl"
	lk=$(lockfloor); add lockfloor "$lk"
	echo "rep $rep: read floor $fl s; lock files for $NPATHS paths $lk s"
	for mode in nohash hash; do
		flag=(); [ $mode = hash ] && flag=(--hash-given)
		nix_side() { reset; timed n "$W/dump-$mode" nix-store --register-validity "${flag[@]}"; rows > "$W/rows-nix"; }
		tool_side() { reset; timed t "$W/dump-$mode" "$BIN" register "${flag[@]}"; rows > "$W/rows-tool"; }
		if [ $((rep % 2)) -eq 1 ]; then nix_side; tool_side; order="nix first"
		else tool_side; nix_side; order="tool first"; fi
		cmp -s "$W/rows-nix" "$W/rows-tool" || { echo "register.sh: rows differ ($mode):" >&2; diff "$W/rows-nix" "$W/rows-tool" | head >&2; exit 1; }
		echo "rep $rep $mode ($order): nix $n s, tool $t s; rows equal ($(wc -l < "$W/rows-nix") lines)"
		add "$mode-nix" "$n"; add "$mode-tool" "$t"
	done
done
r() { echo "scale=2; $1 / $2" | bc; }
for mode in nohash hash; do
	echo "$mode: nix ${sum[$mode-nix]} s, tool ${sum[$mode-tool]} s over $REPS: $(r "${sum[$mode-nix]}" "${sum[$mode-tool]}")x faster; tool / read floor $(r "${sum[$mode-tool]}" "${sum[floor]}"); tool / (read floor + lock files) $(r "${sum[$mode-tool]}" "$(echo "${sum[floor]} + ${sum[lockfloor]}" | bc)")"
done
rm -rf "$R" "$W/db-empty"
