// Package store is storekeeper's store-access layer: the layout of a Nix or
// Guix store (logical store dir, physical location, state dir), nix.conf
// settings, the SQLite database, store paths and Nix base-32, NAR
// serialisation and hashing, and the in-memory reference graph.
//
// Every capability package (gc, optimise, verify, repair, roots, lock users)
// reaches the store only through this package. Imports run one way:
// cmd -> capability packages -> store -> lock; store imports nothing else
// from storekeeper.
package store
