#!/bin/bash
# inroot.sh ROOT CMD [ARGS...]
#
# Runs CMD with ROOT/nix bind-mounted on /nix, in a private mount
# namespace (the host's /nix is untouched), so that a store copied
# anywhere is seen at /nix/store with the default state dir /nix/var/nix.
# Needs root. The other bench scripts run every command through it.
set -eu
[ $# -ge 2 ] || { echo "usage: inroot.sh ROOT CMD [ARGS...]" >&2; exit 2; }
mkdir -p /nix
exec unshare -m --propagation private sh -c 'mount --bind "$0/nix" /nix && exec "$@"' "$@"
