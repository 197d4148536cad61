package db

// RawURI is the URI LoadGraph's raw connections open d with.
func RawURI(d *DB) string { return d.rawURI }

// WALHasFrames exposes walHasFrames.
var WALHasFrames = walHasFrames
