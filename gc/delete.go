package gc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"storekeeper/graph"
	"storekeeper/lock"
	"storekeeper/nix/storepath"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/store/fs"
)

var errRetryBatch = errors.New("gc: batch changed under us")

// invalidateAndMove invalidates the dead paths batch by batch (each batch
// one transaction, referrers before references, components whole) and
// moves each committed batch into the trash; then it moves the other
// dead entries. It runs with gc.lock held.
func (c *collector) invalidateAndMove(ctx context.Context, p *plan) error {
	if c.o.BeforeInvalidation != nil {
		c.o.BeforeInvalidation()
	}
	c.startPhase("invalidation", int64(len(p.deadIDs)+len(p.others)))
	run, err := c.newTrashRun()
	if err != nil {
		return err
	}
	c.trash = run
	storeFd, err := unix.Open(c.lay.RealStoreDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("gc: opening %s: %w", c.lay.RealStoreDir, err)
	}
	defer unix.Close(storeFd)
	mv := &mover{c: c, fromFd: storeFd, toFd: run.Fd, from: c.lay.RealStoreDir, to: run.Path}
	conn, doneConn, err := c.invalidationConn(ctx)
	if err != nil {
		return err
	}
	defer doneConn()
	low := c.spaceIsLow()
	if low {
		c.progress.Info("little free space: invalidating in small transactions and deleting each one's paths at once")
	}
	mv.deleteNow = low

	comps := p.comps
	if p.limit >= 0 {
		comps = comps[:p.limit]
	}
	// Two stages: this goroutine claims and invalidates batch k+1 while
	// a mover renames the directories of the committed batch k into the
	// trash. Both finish before the lock is released.
	type committed struct {
		ids   []graph.PathID
		spare map[string]bool
	}
	moves := make(chan committed, 1)
	moverDone := make(chan struct{})
	go func() {
		defer close(moverDone)
		for b := range moves {
			n, nar := 0, uint64(0)
			for _, id := range b.ids {
				name := c.g.Name(id)
				if b.spare[name] {
					c.mu.Lock()
					c.res.Spared = append(c.res.Spared, c.g.Path(id))
					c.mu.Unlock()
					continue
				}
				if c.deletions != nil {
					c.deletions.Deleting(c.g.Path(id))
				}
				mv.move(name)
				n++
				nar += c.g.NarSize[id]
			}
			c.mu.Lock()
			c.res.PathsDeleted += n
			c.res.PathsValid -= n
			c.res.ValidNarBytes -= nar
			c.res.PathsDeadLeft -= n
			c.res.DeadNarBytesLeft -= nar
			c.mu.Unlock()
			c.releasePending(b.ids)
			c.progress.Add(int64(len(b.ids)))
		}
	}()
	remaining := 0
	for _, comp := range comps {
		remaining += len(comp)
	}
	var loopErr error
	for i := 0; i < len(comps) && loopErr == nil; {
		if err := ctx.Err(); err != nil {
			loopErr = err
			break
		}
		size := c.batchSize(remaining, low)
		var batch [][]graph.PathID
		n := 0
		for i < len(comps) && n < size {
			batch = append(batch, comps[i])
			n += len(comps[i])
			i++
		}
		remaining -= n
		for attempt := 0; ; attempt++ {
			ids := c.claim(batch)
			if len(ids) == 0 {
				break
			}
			spare, err := c.invalidate(ctx, conn, ids)
			if errors.Is(err, errRetryBatch) && attempt < 10 {
				c.releasePending(ids)
				continue
			}
			if err != nil {
				c.releasePending(ids)
				loopErr = err
				break
			}
			if low {
				c.checkpoint(ctx)
			}
			moves <- committed{ids, spare}
			break
		}
	}
	close(moves)
	<-moverDone
	if loopErr != nil {
		return loopErr
	}
	if p.limit >= 0 && p.limit < len(p.comps) {
		c.progress.Info(fmt.Sprintf("deleted more than %d bytes; stopping", c.o.MaxFreed))
		return nil
	}
	return c.moveOthers(ctx, p, mv)
}

// claim drops the components that became alive (a client registered a
// temporary root through the socket) and marks the rest as being
// deleted; the socket server holds back its answer for those.
func (c *collector) claim(batch [][]graph.PathID) []graph.PathID {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []graph.PathID
	for _, comp := range batch {
		keep := true
		for _, id := range comp {
			if c.live.Alive(id) || c.tempHash[c.g.Name(id)[:storepath.HashLen]] {
				keep = false
				break
			}
		}
		if !keep {
			for _, id := range comp {
				c.res.Spared = append(c.res.Spared, c.g.Path(id))
			}
			continue
		}
		for _, id := range comp {
			c.pendingID[id] = true
			c.pendingHash[c.g.Name(id)[:storepath.HashLen]] = true
			ids = append(ids, id)
		}
	}
	return ids
}

// releasePending ends the deletion of ids (or, with none, of the
// single-entry deletions of moveOthers) and wakes the socket clients
// waiting for it.
func (c *collector) releasePending(ids []graph.PathID) {
	c.mu.Lock()
	if ids == nil {
		clear(c.pendingHash)
	}
	for _, id := range ids {
		delete(c.pendingID, id)
		delete(c.pendingHash, c.g.Name(id)[:storepath.HashLen])
	}
	c.cond.Broadcast()
	c.mu.Unlock()
}

// beginner starts transactions: the pool (*sql.DB) or one of its
// connections (*sql.Conn).
type beginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// invalidationConn returns the connection invalidation runs on: one of
// the pool's, with SQLite's foreign key enforcement turned off
// (db.InvalidationConn; db.Invalidate checks what the keys would), or
// left on where the schema has keys db.Invalidate does not know (Nix's
// ca-derivations tables).
func (c *collector) invalidationConn(ctx context.Context) (conn *sql.Conn, done func(), err error) {
	conn, done, err = c.s.DB.InvalidationConn(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("gc: %w", err)
	}
	return conn, done, nil
}

// invalidate removes the batch from the DB in one transaction on conn
// (db.Invalidate: referrers' rows first, no Refs row left referring to a
// deleted path, with or without SQLite's enforcement). The transaction
// holds SQLite's write lock from its first statement, so nothing can be
// registered between the check and the deletion; once it holds the lock
// a cancellation lets it finish, so a batch is never half done between
// the DB and the disk, and a cancellation while it waits for the lock
// (a nix-daemon writing) rolls it back, having changed nothing.
//
// When a path outside the batch refers into it (registered since the
// graph was loaded, by a build finishing), nothing is changed: that
// path's closure is marked alive and errRetryBatch is returned.
// invalidate returns the names that are valid again under a new id
// (invalidated and registered again meanwhile): those are left in place.
func (c *collector) invalidate(ctx context.Context, conn beginner, ids []graph.PathID) (map[string]bool, error) {
	tctx := context.WithoutCancel(ctx)
	tx, err := conn.BeginTx(tctx, nil)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	defer tx.Rollback()
	dbids := make([]int64, len(ids))
	for i, id := range ids {
		dbids[i] = c.g.DBID(id)
	}
	valid, err := db.Invalidate(ctx, tx, dbids, func(i int) string { return c.g.Path(ids[i]) })
	var re *db.ReferencedError
	if errors.As(err, &re) {
		tx.Rollback()
		return nil, c.keepReferenced(ids, re)
	}
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("gc: committing invalidation: %w", err)
	}
	spare := make(map[string]bool, len(valid))
	for p := range valid {
		spare[strings.TrimPrefix(p, c.lay.StoreDir+"/")] = true
	}
	return spare, nil
}

// keepReferenced runs after the batch ids could not be invalidated
// because valid paths outside it refer into it (re, from db.Invalidate's
// check or from a foreign key of the database): those paths were
// registered during the collection; it keeps them and marks the batch
// paths they refer to (and so their closures) alive, and returns
// errRetryBatch. If re names no such path, it returns re.
func (c *collector) keepReferenced(ids []graph.PathID, re *db.ReferencedError) error {
	byDBID := make(map[int64]graph.PathID, len(ids))
	for _, id := range ids {
		byDBID[c.g.DBID(id)] = id
	}
	found := false
	c.mu.Lock()
	for _, h := range re.Refs {
		id, ok := byDBID[h.Reference]
		if !ok {
			continue
		}
		found = true
		c.warn("%s was registered during the collection and refers to %s; keeping it", h.Referrer, c.g.Path(id))
		if base, err := storepath.Parse(c.lay.StoreDir, h.Referrer); err == nil {
			c.tempHash[storepath.HashPart(base)] = true
		}
		c.live.MarkRoot(id, "referenced by "+h.Referrer)
	}
	c.mu.Unlock()
	if !found {
		return fmt.Errorf("gc: invalidating: %w", re)
	}
	return errRetryBatch
}

// moveOthers moves the dead entries that are not valid paths: invalid
// leftovers, lock files and temporary links. Right before, it checks
// again that none of them became valid (registered by a builder since the
// graph was loaded), and it skips lock files a process holds.
func (c *collector) moveOthers(ctx context.Context, p *plan, mv *mover) error {
	var sp []string
	for _, e := range p.others {
		if e.isSP {
			sp = append(sp, c.lay.StoreDir+"/"+e.name)
		}
	}
	nowValid, err := c.s.DB.ValidAmong(ctx, sp)
	if err != nil {
		return err
	}
	for _, e := range p.others {
		if err := ctx.Err(); err != nil {
			return err
		}
		full := c.lay.StoreDir + "/" + e.name
		if nowValid[full] {
			continue
		}
		if strings.HasSuffix(e.name, ".lock") {
			if held, _ := lock.IsLocked(filepath.Join(c.lay.RealStoreDir, e.name)); held {
				continue // a builder holds it
			}
		} else if held, _ := lock.IsLocked(filepath.Join(c.lay.RealStoreDir, e.name+".lock")); held {
			continue // a build in progress owns this entry
		}
		c.mu.Lock()
		var h string
		if e.isSP {
			h = storepath.HashPart(e.name)
			if c.tempHash[h] {
				c.mu.Unlock()
				continue
			}
			c.pendingHash[h] = true
		}
		c.mu.Unlock()
		if c.deletions != nil {
			c.deletions.Deleting(full)
		}
		mv.move(e.name)
		c.res.EntriesDeleted++
		c.releasePending(nil)
		c.progress.Add(1)
	}
	return nil
}

// mover renames entries of a directory (the store dir) into a run
// directory of the trash, relative to open directory descriptors (no path
// is resolved again, so a symlink swapped in cannot redirect it).
type mover struct {
	c            *collector
	fromFd, toFd int
	from, to     string // their paths, for messages
	// deleteNow deletes each entry right after moving it (low space:
	// see spaceIsLow), instead of leaving it to deleteTrash.
	deleteNow bool
}

// move moves name (fs.MoveInto); an entry already gone (deleted, or
// claimed by another collection) is skipped.
func (m *mover) move(name string) {
	dst, err := fs.MoveInto(m.fromFd, name, m.toFd)
	switch {
	case err == nil:
		if m.deleteNow {
			n, err := fs.RemoveTree(m.toFd, dst, m.to+"/"+dst)
			m.c.mu.Lock()
			m.c.res.BytesFreed += n
			m.c.mu.Unlock()
			if err != nil {
				m.c.warn("%v (it is invalid now; the next run deletes it)", err)
			}
		}
	case !errors.Is(err, unix.ENOENT):
		m.c.warn("cannot move %s to %s: %v (it is invalid now; the next run deletes it)", filepath.Join(m.from, name), m.to, err)
	}
}

// removeUnusedLinks deletes the .links entries nothing else links to
// (link count 1) and computes what hard-linking still saves, like Nix.
// A concurrent optimise may link to an entry just as it is deleted; the
// file it linked stays intact in its store path (only the sharing is
// lost), so this needs no lock of its own. It runs under gc.lock shared,
// like the deletion of the trash: Nix's collector, which does the same
// pass and fails when an entry disappears under it, waits meanwhile. An
// entry someone else removes first is neither an error nor counted.
func (c *collector) removeUnusedLinks(ctx context.Context) error {
	dir := c.lay.LinksDir()
	names, err := readStoreDir(dir)
	if err != nil {
		if _, serr := os.Lstat(dir); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return err
	}
	c.startPhase("links", int64(len(names)))
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("gc: opening %s: %w", dir, err)
	}
	defer unix.Close(fd)
	var actual, unshared int64
	for i, n := range names {
		if i&1023 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		if st.Nlink != 1 {
			actual += st.Size
			unshared += int64(st.Nlink-1) * st.Size
			continue
		}
		if err := unix.Unlinkat(fd, n, 0); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed by someone else, who freed it
			}
			return fmt.Errorf("gc: deleting %s/%s: %w", dir, n, err)
		}
		c.res.LinksDeleted++
		c.res.BytesFreed += uint64(st.Blocks) * 512
		if i&255 == 0 {
			c.progress.Add(256)
		}
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil {
		c.res.LinkSavings = unshared - actual - st.Blocks*512
	}
	return nil
}

// recreateReserved puts back db/reserved (gc-reserved-space bytes), which
// the collection removed so that a full disk could not block SQLite.
func (c *collector) recreateReserved() {
	if err := RestoreReserved(c.lay, c.s.Settings.GCReservedSpace); err != nil {
		c.warn("%v", err)
	}
}

// RestoreReserved creates db/reserved with size bytes (Nix's
// gc-reserved-space) if it is missing or has another size.
func RestoreReserved(lay store.Layout, size uint64) error {
	if size == 0 {
		return nil
	}
	p := filepath.Join(lay.DBDir(), "reserved")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("gc: recreating %s: %w", p, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() == int64(size) {
		return nil
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, int64(size)); err != nil {
		if err := f.Truncate(int64(size)); err != nil {
			return fmt.Errorf("gc: recreating %s: %w", p, err)
		}
	}
	return nil
}

const (
	// defaultBatchSize is the most paths one invalidation transaction
	// takes. Big transactions are cheaper per path: the rows of a batch
	// share the pages of the DB's indexes, and each commit writes every
	// page it dirtied to the WAL once. On a 315k-path DB (tmpfs, 288k
	// dead) invalidating took 15.2 s in batches of 4096 and 13.5 s in
	// batches of 65536.
	defaultBatchSize = 65536
	// minTailBatch: the batches shrink towards the end (batchSize), so
	// that the renames of the last one, which no invalidation overlaps,
	// keep gc.lock only briefly.
	minTailBatch = 1024
	// With little free space, a transaction's WAL must fit in it: a
	// batch takes a quarter of the free space at walBytesPerPath (about
	// eight distinct pages a path, the worst case of a small batch).
	walBytesPerPath  = 32 << 10
	lowSpaceBatchMin = 16
	lowSpaceBatchMax = 4096
)

// batchSize returns how many paths the next transaction takes when
// remaining paths are left to invalidate.
func (c *collector) batchSize(remaining int, low bool) int {
	limit := c.o.BatchSize
	if low {
		free, _, err := fs.FreeSpace(c.lay.DBDir())
		if err != nil {
			return min(limit, lowSpaceBatchMin)
		}
		return min(limit, max(lowSpaceBatchMin, min(lowSpaceBatchMax, int(free/4/walBytesPerPath))))
	}
	return min(limit, max(min(limit, minTailBatch), remaining/4))
}

// spaceIsLow reports whether the DB's file system has too little free
// space for the WAL of normal batches. A transaction can dirty every page
// of the DB, and SQLite only checkpoints and rewinds the WAL every 40000
// pages (160 MiB, Nix's setting), so normal batches want the DB's size
// and 192 MiB free. With less (a full disk, db/reserved just released),
// the collector works as Nix does: small transactions, a checkpoint after
// each, and each batch deleted at once, so that space grows as it goes.
func (c *collector) spaceIsLow() bool {
	free, _, err := fs.FreeSpace(c.lay.DBDir())
	if err != nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Stat(c.lay.DBPath(), &st); err != nil {
		return false
	}
	return free < uint64(st.Size)+192<<20
}

// checkpoint copies the WAL into the DB (low space): once all of it is
// copied, the next transaction writes the WAL from its start again
// instead of growing it. PASSIVE never waits for readers (a nix-daemon
// query); while one holds an old snapshot the WAL grows a little more,
// which is not an error.
func (c *collector) checkpoint(ctx context.Context) {
	c.s.DB.SQL.ExecContext(context.WithoutCancel(ctx), "pragma wal_checkpoint(PASSIVE)")
}
