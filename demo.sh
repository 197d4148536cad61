#!/bin/sh
# Quick start: build storekeeper and run its read-only commands on this
# machine's Nix store, or, when there is none, on a demo store it creates
# under ./demo-store (no Nix needed). Nothing in a real store is changed.
set -eu
cd "$(dirname "$0")"
go build -o bin/storekeeper ./cmd/storekeeper
if [ -s /nix/var/nix/db/db.sqlite ] && [ -d /nix/store ]; then
    echo "== using this machine's Nix store (/nix/store), read-only"
    set --
else
    if [ ! -e demo-store/nix/var/nix/db/db.sqlite ]; then
        go run ./cmd/mkdemostore demo-store
    fi
    echo "== no Nix store here: using the demo store in ./demo-store"
    set -- --store "$PWD/demo-store"
fi
echo "== storekeeper roots"
bin/storekeeper "$@" roots
echo "== storekeeper roots --json (first lines)"
bin/storekeeper "$@" roots --json | head -n 12
