// Package store is the top of storekeeper's store-access layer: Layout
// (the one authority on where a Nix or Guix store's pieces are: logical
// store dir, physical location, state dir, `--store` URLs), Store (a
// layout, its settings and its open database), and CheckPresence (the
// store dir is the store the database describes, not an empty mount).
//
// Below it: store/db (SQLite: open, schema, big-lock, the graph loader,
// Invalidate), store/fs (fd-relative file-system primitives), nix/* (pure
// formats) and internal/sys (system calls). Capability packages (gc,
// optimise, verify, repair, roots) reach the store through these layers;
// store imports no capability package.
package store
