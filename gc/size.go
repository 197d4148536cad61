package gc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
)

// usage is what one store entry holds on disk.
type usage struct {
	single uint64            // blocks of files with one link
	multi  map[uint64]ilinks // files with several links, by inode
}

type ilinks struct {
	nlink  uint64
	seen   uint64 // links met inside the dead entries
	blocks uint64
}

// walkUsage measures one entry (relative to the real store dir) without
// following symlinks.
func walkUsage(root string) (usage, error) {
	u := usage{multi: map[uint64]ilinks{}}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return nil
		}
		b := uint64(st.Blocks) * 512
		if st.Nlink <= 1 {
			u.single += b
			return nil
		}
		l := u.multi[st.Ino]
		l.nlink, l.blocks = uint64(st.Nlink), b
		l.seen++
		u.multi[st.Ino] = l
		return nil
	})
	return u, err
}

// linkInodes reads the inode numbers of the .links entries from the
// directory entries themselves (getdents), with no stat per entry.
func linkInodes(dir string) (map[uint64]bool, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return map[uint64]bool{}, nil
		}
		return nil, err
	}
	defer unix.Close(fd)
	ents, err := sys.ReadDirents(fd, nil)
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]bool, len(ents))
	for _, e := range ents {
		out[e.Ino] = true
	}
	return out, nil
}

// usages measures the given entries in parallel.
func (c *collector) usages(ctx context.Context, names []string) ([]usage, error) {
	out := make([]usage, len(names))
	var wg sync.WaitGroup
	work := make(chan int, 256)
	var firstErr error
	var once sync.Once
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				u, err := walkUsage(filepath.Join(c.lay.RealStoreDir, names[i]))
				if err != nil {
					once.Do(func() { firstErr = err })
				}
				out[i] = u
				c.progress.Add(1)
			}
		}()
	}
	for i := range names {
		if ctx.Err() != nil {
			break
		}
		work <- i
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, firstErr
}

// freedBytes adds up what deleting all of us frees: single-link files,
// and multi-link files whose every link is among us or in .links.
func freedBytes(us []usage, links map[uint64]bool) (total uint64, perEntry []uint64) {
	seen := map[uint64]ilinks{}
	owner := map[uint64]int{}
	for i, u := range us {
		for ino, l := range u.multi {
			s := seen[ino]
			s.nlink, s.blocks = l.nlink, l.blocks
			s.seen += l.seen
			seen[ino] = s
			if _, ok := owner[ino]; !ok {
				owner[ino] = i
			}
		}
	}
	perEntry = make([]uint64, len(us))
	for i, u := range us {
		perEntry[i] += u.single
		total += u.single
	}
	for ino, s := range seen {
		extra := uint64(0)
		if links[ino] {
			extra = 1
		}
		if s.seen+extra >= s.nlink {
			total += s.blocks
			perEntry[owner[ino]] += s.blocks
		}
	}
	return total, perEntry
}

// measure computes what the plan would free (dry run).
func (c *collector) measure(ctx context.Context, p *plan) (uint64, error) {
	names := p.entryNames(c)
	us, err := c.usages(ctx, names)
	if err != nil {
		return 0, err
	}
	links, err := linkInodes(c.lay.LinksDir())
	if err != nil {
		return 0, err
	}
	total, _ := freedBytes(us, links)
	return total, nil
}

// limit cuts the plan for MaxFreed: whole components in deletion order,
// up to and including the one that crosses the limit (like Nix, which
// stops after it has deleted more than asked).
func (c *collector) limit(ctx context.Context, p *plan) error {
	names := make([]string, len(p.deadIDs))
	for i, id := range p.deadIDs {
		names[i] = c.g.Name(id)
	}
	us, err := c.usages(ctx, names)
	if err != nil {
		return err
	}
	links, err := linkInodes(c.lay.LinksDir())
	if err != nil {
		return err
	}
	_, per := freedBytes(us, links)
	var sum uint64
	k := 0
	for ci, comp := range p.comps {
		for range comp {
			sum += per[k]
			k++
		}
		if sum > c.o.MaxFreed {
			p.limit = ci + 1
			return nil
		}
	}
	return nil
}

// entryNames lists the plan's entries (dead valid paths, then others).
func (p *plan) entryNames(c *collector) []string {
	var out []string
	for _, id := range p.deadIDs {
		out = append(out, c.g.Name(id))
	}
	for _, e := range p.others {
		out = append(out, e.name)
	}
	return out
}
