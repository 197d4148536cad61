package db

import (
	"context"
	"database/sql"
	"fmt"
	"sort"

	"storekeeper/nix/nar"
)

// PathRow is a ValidPaths row and its references, as PathRows reads it.
type PathRow struct {
	Path    string
	ID      int64
	NarHash nar.Hash
	// HashErr: the hash column could not be parsed (NarHash is zero).
	HashErr error
	NarSize uint64 // 0: unknown (old stores)
	// References are the full paths the row refers to (Refs), sorted,
	// self-references included.
	References []string
}

// PathRows reads the ValidPaths rows of paths (full store paths) and
// their references, in one read transaction (so all of them as of one
// instant), with one query per 500 paths for the rows and one per 500
// ids for the references: never a query per path. A path that is not
// valid has no entry in the map.
func (d *DB) PathRows(ctx context.Context, paths []string) (map[string]*PathRow, error) {
	out, err := pathRows(ctx, d.SQL, paths)
	if err != nil {
		return nil, classifyDBError(d.Path, err)
	}
	return out, nil
}

func pathRows(ctx context.Context, sdb *sql.DB, paths []string) (map[string]*PathRow, error) {
	out := make(map[string]*PathRow, len(paths))
	if len(paths) == 0 {
		return out, nil
	}
	tx, err := sdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	byID := map[int64]*PathRow{}
	for i := 0; i < len(paths); i += invalidateChunk {
		part := paths[i:min(i+invalidateChunk, len(paths))]
		args := make([]any, len(part))
		for j, p := range part {
			args[j] = p
		}
		rows, err := tx.QueryContext(ctx, "select id, path, hash, narSize from ValidPaths where path in ("+placeholders(len(part))+")", args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var r PathRow
			var hash string
			var size sql.NullInt64
			if err := rows.Scan(&r.ID, &r.Path, &hash, &size); err != nil {
				rows.Close()
				return nil, err
			}
			r.NarHash, r.NarSize, r.HashErr = rowHash(r.Path, hash, size)
			out[r.Path] = &r
			byID[r.ID] = &r
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	ids := make([]int64, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, part := range chunkIDs(ids) {
		rows, err := tx.QueryContext(ctx, "select r.referrer, v.path from Refs r join ValidPaths v on v.id = r.reference where r.referrer in ("+placeholders(len(part))+")", part...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id int64
			var p string
			if err := rows.Scan(&id, &p); err != nil {
				rows.Close()
				return nil, err
			}
			if r := byID[id]; r != nil {
				r.References = append(r.References, p)
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	for _, r := range out {
		sort.Strings(r.References)
	}
	return out, nil
}

// rowHash reads a ValidPaths row's hash and narSize columns: the size,
// 0 when NULL or not positive (old stores), and the hash, or why it
// could not be parsed (HashErr: the row is still usable by path).
func rowHash(path, hash string, size sql.NullInt64) (nar.Hash, uint64, error) {
	var n uint64
	if size.Valid && size.Int64 > 0 {
		n = uint64(size.Int64)
	}
	h, err := parseDBHash(hash)
	if err != nil {
		err = fmt.Errorf("the database's hash %q of %s: %w", hash, path, err)
	}
	return h, n, err
}
