#!/bin/sh
# Quick start: build storekeeper and run its read-only commands on this
# machine's Nix store, or, when there is none (or it is empty), on a demo
# store it creates under ./demo-store (no Nix needed). Nothing in a real
# store is changed.
set -eu
cd "$(dirname "$0")"
go build -o bin/storekeeper ./cmd/storekeeper
if [ -s /nix/var/nix/db/db.sqlite ] && [ -d /nix/store ] &&
    ! bin/storekeeper info --json 2>/dev/null | grep -q '"valid_paths": 0,'; then
    echo "== using this machine's Nix store (/nix/store), read-only"
    set --
else
    if [ ! -e demo-store/nix/var/nix/db/db.sqlite ]; then
        go run ./cmd/mkdemostore demo-store
    fi
    echo "== no Nix store with paths here: using the demo store in ./demo-store"
    set -- --store "$PWD/demo-store"
fi
echo "== storekeeper info"
bin/storekeeper "$@" info
echo "== storekeeper roots"
bin/storekeeper "$@" roots
echo "== storekeeper roots size (what removing each root alone would free; the five largest)"
bin/storekeeper "$@" roots size | head -6
path=$(bin/storekeeper "$@" roots 2>/dev/null | head -1 | sed 's/.* -> //')
if [ -n "$path" ]; then
    echo "== storekeeper roots why (why a path is alive: a root and a shortest chain)"
    bin/storekeeper "$@" roots why "$path"
fi
echo "== storekeeper lock status (who holds the store's locks)"
bin/storekeeper "$@" lock status
echo "== storekeeper gc --dry-run (what a collection would free; nothing is deleted)"
bin/storekeeper "$@" gc --dry-run
echo "== storekeeper verify --check-contents --no-record (read-only audit)"
bin/storekeeper "$@" verify --check-contents --no-record
