#!/bin/bash
# mkrealstore.sh ROOT [MAXPKGS]
#
# Builds a Nix store of real binaries at ROOT/nix for the verify benchmark
# of issue #27: one valid store path per installed Debian package of this
# machine, holding that package's regular files and symlinks (`dpkg -L`,
# directories only as the parents of those), at their paths relative to /
# (a symlink dpkg lists with files under it, such as merged-/usr's /lib,
# becomes a directory).
# The packages are taken in sorted order (`dpkg-query -W
# '${binary:Package}'`), at most MAXPKGS of them (default: all). Each
# package's files are staged in ROOT/stage/deb-NAME (":" in NAME becomes
# "-") and added by the real Nix (`nix-store --add`, run inside
# bench/inroot.sh, which made the database with `nix-store --init`), so
# every path is content-addressed, canonicalised and registered by Nix
# itself (narHash, narSize, ca "fixed:r:sha256:..."; no references).
# Files under /nix, /proc, /sys, /dev and /run are left out; files dpkg
# lists but that are missing are skipped. Finally `nix-store --verify
# --check-contents` checks the store inside the namespace. On the 2-core
# development VM (Debian, 755 packages) this gives ~750 paths, ~90k files,
# a few GB, in a few minutes.
#
# ROOT must not exist or be empty and must not be under /nix. Needs root
# (private mount namespaces), dpkg, GNU tar, nix-bin and sqlite3.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: mkrealstore.sh ROOT [MAXPKGS]" >&2; exit 2; }
MAX=${2:-0}
case $MAX in ''|*[!0-9]*) echo "mkrealstore.sh: MAXPKGS must be a number, not '$MAX'" >&2; exit 2;; esac
[ "$(id -u)" = 0 ] || { echo "mkrealstore.sh: needs root (private mount namespaces)" >&2; exit 2; }
for c in dpkg dpkg-query tar nix-store sqlite3 unshare; do
	command -v $c >/dev/null || { echo "mkrealstore.sh: needs $c" >&2; exit 2; }
done
mkdir -p "$1"; R=$(readlink -f "$1")
case $R/ in /nix/*) echo "mkrealstore.sh: ROOT may not be under /nix" >&2; exit 2;; esac
[ -z "$(ls -A "$R")" ] || { echo "mkrealstore.sh: $R is not empty" >&2; exit 2; }
inroot() { "$HERE/inroot.sh" "$R" "$@"; }

mkdir -p "$R/nix" "$R/stage"
inroot nix-store --init

export LC_ALL=C
mapfile -t PKGS < <(dpkg-query -W -f='${binary:Package}\n' | sort -u)
[ "$MAX" -gt 0 ] && [ "${#PKGS[@]}" -gt "$MAX" ] && PKGS=("${PKGS[@]:0:$MAX}")
echo "mkrealstore: staging ${#PKGS[@]} packages in $R/stage" >&2
LIST=$R/stage/.list
DIRS=()
for p in "${PKGS[@]}"; do
	d=$R/stage/deb-${p//:/-}
	# Regular files and symlinks that exist, relative to /.
	dpkg -L "$p" 2>/dev/null | grep -v -E '^/(nix|proc|sys|dev|run)(/|$)' |
		while IFS= read -r f; do
			[ -n "$f" ] || continue
			if [ -L "$f" ] || { [ -f "$f" ] && [ ! -d "$f" ]; }; then printf '%s\n' "${f#/}"; fi
		done | awk '{ l[NR] = $0; n = split($0, c, "/"); q = c[1]
			for (i = 2; i <= n; i++) { par[q] = 1; q = q "/" c[i] } }
			END { for (i = 1; i <= NR; i++) if (!(l[i] in par)) print l[i] }' > "$LIST" || true
	[ -s "$LIST" ] || { echo "mkrealstore: $p has no files, skipped" >&2; continue; }
	mkdir "$d"
	tar -C / --no-recursion --verbatim-files-from -T "$LIST" -cf - | tar -C "$d" -xf -
	DIRS+=("$d")
done
rm -f "$LIST"
echo "mkrealstore: adding ${#DIRS[@]} paths with nix-store --add" >&2
inroot nix-store --add "${DIRS[@]}" > "$R/paths"
rm -rf "$R/stage"
n=$(wc -l < "$R/paths")
[ "$n" = "${#DIRS[@]}" ] || { echo "mkrealstore.sh: nix-store --add gave $n paths for ${#DIRS[@]} packages" >&2; exit 1; }
echo "mkrealstore: checking with nix-store --verify --check-contents" >&2
inroot nix-store --verify --check-contents
DB=$R/nix/var/nix/db/db.sqlite
echo "mkrealstore: $(sqlite3 -readonly "$DB" 'select count(*) from ValidPaths') paths, $(sqlite3 -readonly "$DB" 'select sum(narSize) from ValidPaths') NAR bytes, $(find "$R/nix/store" -mindepth 1 \( -type f -o -type l \) | wc -l) files and symlinks at $R/nix" >&2
