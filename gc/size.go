package gc

import (
	"context"

	"storekeeper/store/usage"
)

// usages measures the given entries in parallel (usage.Measure), one
// progress step each.
func (c *collector) usages(ctx context.Context, names []string) ([]usage.Usage, error) {
	return usage.Measure(ctx, c.lay.RealStoreDir, names, 0, func() { c.progress.Add(1) })
}

// measure computes what the plan would free (dry run): its entries, and
// the .links entries nothing links to any more, which removeUnusedLinks
// deletes after them.
func (c *collector) measure(ctx context.Context, p *plan) (uint64, error) {
	names := p.entryNames(c)
	us, err := c.usages(ctx, names)
	if err != nil {
		return 0, err
	}
	links, err := usage.LinkInodes(c.lay.LinksDir())
	if err != nil {
		return 0, err
	}
	total, _ := usage.Freed(us, links)
	unused, err := usage.UnusedLinks(ctx, c.lay.LinksDir())
	if err != nil {
		return 0, err
	}
	return total + unused, nil
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
	links, err := usage.LinkInodes(c.lay.LinksDir())
	if err != nil {
		return err
	}
	_, per := usage.Freed(us, links)
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
