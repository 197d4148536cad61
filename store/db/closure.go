package db

import (
	"context"
	"database/sql"
	"encoding/json"
	"sort"
	"strings"

	"storekeeper/nix/nar"
)

// PathInfo is a ValidPaths row in full with its references: everything
// copying the path into another store carries over.
type PathInfo struct {
	Path    string
	ID      int64
	NarHash nar.Hash
	// HashErr: the hash column could not be parsed (NarHash is zero).
	HashErr          error
	NarSize          uint64 // 0: unknown (old stores)
	Deriver          string // "" none
	RegistrationTime int64
	Ultimate         bool
	Sigs             []string
	CA               string
	// References are the full paths the row refers to (Refs), sorted,
	// self-references included.
	References []string
}

// closureCTE selects the ids of the closure (under references) of the
// paths given as a JSON array in ?1.
const closureCTE = `with recursive c(id) as (
  select id from ValidPaths where path in (select value from json_each(?1))
  union
  select r.reference from Refs r join c on r.referrer = c.id
) `

// Closure reads the rows of paths (full store paths) and of every path
// they refer to, directly or not, with their references, in one read
// transaction (so all of them as of one instant) and two queries (a
// recursive one for the rows, one for their references): never a query
// per path. missing lists the paths of paths that are not valid, in the
// order given; they have no entry in the map.
func (d *DB) Closure(ctx context.Context, paths []string) (rows map[string]*PathInfo, missing []string, err error) {
	rows, err = d.closure(ctx, paths)
	if err != nil {
		return nil, nil, classifyDBError(d.Path, err)
	}
	for _, p := range paths {
		if rows[p] == nil {
			missing = append(missing, p)
		}
	}
	return rows, missing, nil
}

func (d *DB) closure(ctx context.Context, paths []string) (map[string]*PathInfo, error) {
	out := map[string]*PathInfo{}
	if len(paths) == 0 {
		return out, nil
	}
	arg, err := json.Marshal(paths)
	if err != nil {
		return nil, err
	}
	tx, err := d.SQL.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	cols := "v.id, v.path, v.hash, v.registrationTime, v.deriver, v.narSize"
	for _, c := range []struct {
		has  bool
		name string
	}{{d.HasUltimate, "ultimate"}, {d.HasSigs, "sigs"}, {d.HasCA, "ca"}} {
		if c.has {
			cols += ", v." + c.name
		} else {
			cols += ", null"
		}
	}
	rs, err := tx.QueryContext(ctx, closureCTE+"select "+cols+" from ValidPaths v join c on v.id = c.id", string(arg))
	if err != nil {
		return nil, err
	}
	byID := map[int64]*PathInfo{}
	for rs.Next() {
		var r PathInfo
		var hash string
		var regTime, size, ultimate sql.NullInt64
		var deriver, sigs, ca sql.NullString
		if err := rs.Scan(&r.ID, &r.Path, &hash, &regTime, &deriver, &size, &ultimate, &sigs, &ca); err != nil {
			rs.Close()
			return nil, err
		}
		r.NarHash, r.NarSize, r.HashErr = rowHash(r.Path, hash, size)
		r.RegistrationTime = regTime.Int64
		r.Deriver = deriver.String
		r.Ultimate = ultimate.Valid && ultimate.Int64 != 0
		r.Sigs = strings.Fields(sigs.String)
		r.CA = ca.String
		out[r.Path] = &r
		byID[r.ID] = &r
	}
	err = rs.Err()
	rs.Close()
	if err != nil {
		return nil, err
	}
	rs, err = tx.QueryContext(ctx, closureCTE+"select r.referrer, r.reference from Refs r join c on r.referrer = c.id", string(arg))
	if err != nil {
		return nil, err
	}
	for rs.Next() {
		var from, to int64
		if err := rs.Scan(&from, &to); err != nil {
			rs.Close()
			return nil, err
		}
		if r, ref := byID[from], byID[to]; r != nil && ref != nil {
			r.References = append(r.References, ref.Path)
		}
	}
	err = rs.Err()
	rs.Close()
	if err != nil {
		return nil, err
	}
	for _, r := range out {
		sort.Strings(r.References)
	}
	return out, nil
}
