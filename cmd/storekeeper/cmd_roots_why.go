package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"storekeeper/report"
	"storekeeper/roots"
)

// whyOptions are the flags of `roots why`.
type whyOptions struct {
	all bool // every root that keeps the path, each with its chain
	dot bool // Graphviz instead of text
}

func newRootsWhyCommand(g *globalOptions, ro *rootsOptions) *cobra.Command {
	o := &whyOptions{}
	cmd := &cobra.Command{
		Use:   "why PATH...",
		Short: "Explain why paths are still alive: the root and a shortest chain of paths that keep each",
		Long: `Explain why each PATH (a store path, a file in one, or a symlink to one such
as ./result) is still alive, in the order given: the root that keeps it
(its kind and link; for a link its owner and age; for a runtime or temp root
the pid, user, command line and what held the path: exe, cwd, fd, maps, or
the environment variable that named it) and a shortest chain of paths from
that root, each edge with its kind (reference, keep-outputs,
keep-derivations), as the collector sees it (keep-outputs and
keep-derivations from nix.conf). With --all, every root that keeps it, each
with its own shortest chain (shortest first). A dead path is said to be dead,
with the dead paths 'storekeeper gc' would delete with it and what deleting
them frees on disk (hard links counted: a file also linked from a path that
stays frees nothing) and by NAR size. A path not valid yet that a process
holds as a temporary root (a build or copy in progress) is alive, kept by
that root.

The roots and the graph are read once for all the paths; nothing is changed
and no write access is needed. While a garbage collection runs, it waits for
it to finish (and says so). As a user other than root, or with --no-runtime
or --no-temp, some roots are not seen (other users' processes, potential
roots it may not read): warnings name them, and a path reported dead may
still be kept by one of them; run it as root for the collector's answer.
'roots --why PATH' is the same as 'roots why PATH'.

Output: text; --json (per path: argument, path, alive, root, chain, roots,
dead_with, nar_bytes, freed_bytes, or error); --dot, a Graphviz digraph of
the chains (roots as boxes, paths as ellipses, edges labelled with their
kind when not a reference): 'storekeeper roots why --all --dot P | dot -Tsvg'.

Exit status: 0 every PATH explained, 1 some PATH could not be (not a valid
store path, or its files unreadable; named, and the others still explained),
2 could not run (no store, roots unreadable, bad usage).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("roots why needs at least one PATH: a store path, a file in one, or a symlink to one such as ./result")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			g.ran = true
			return runRootsWhy(cmd, g, ro, o, args)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.all, "all", false, "list every root that keeps each path, each with its shortest chain")
	f.BoolVar(&o.dot, "dot", false, "print a Graphviz digraph of the chains instead of text")
	return cmd
}

// whyResult is the --json result of roots why: one entry per argument.
type whyResult struct {
	Paths []whyPath `json:"paths"`
}

// whyPath is one argument's explanation, or its error.
type whyPath struct {
	Argument string `json:"argument"`
	*roots.Explanation
	Error *jsonError `json:"error,omitempty"`
}

// runRootsWhy answers "why is this path still alive?" for each argument,
// from one load of the roots and the graph.
func runRootsWhy(cmd *cobra.Command, g *globalOptions, ro *rootsOptions, o *whyOptions, args []string) error {
	if o.dot && g.json {
		return usagef("--dot and --json exclude each other")
	}
	ctx := cmd.Context()
	p := g.printer(cmd)
	s, err := g.openStore(ctx, true)
	if err != nil {
		return err
	}
	defer s.Close()
	es, errs, err := roots.WhyPaths(ctx, s, args, roots.WhyOptions{
		Roots:       roots.Options{NoRuntime: ro.noRuntime, NoTemp: ro.noTemp},
		KeepOutputs: s.Settings.KeepOutputs, KeepDerivations: s.Settings.KeepDerivations,
		All:      o.all,
		Progress: newProgress(p),
	})
	if err != nil {
		return err
	}
	failed := 0
	res := whyResult{Paths: make([]whyPath, len(args))}
	for i, arg := range args {
		res.Paths[i] = whyPath{Argument: arg, Explanation: es[i]}
		if errs[i] != nil {
			failed++
			oc := classify(errs[i], false, nil, "")
			res.Paths[i].Error = &jsonError{Kind: oc.kind, Message: oc.message}
			p.Errorf("cannot explain '%s': %s", report.Name(arg), errs[i].Error())
		}
	}
	switch {
	case g.json:
		p.JSON(res)
	case o.dot:
		fmt.Fprint(p.out, whyDot(es))
	default:
		var b strings.Builder
		now := time.Now()
		first := true
		for _, e := range es {
			if e == nil {
				continue
			}
			if !first {
				b.WriteString("\n")
			}
			first = false
			whyText(&b, e, o.all, now)
		}
		fmt.Fprint(p.out, b.String())
	}
	if failed > 0 {
		return &findingsError{fmt.Sprintf("%d of %d paths could not be explained", failed, len(args))}
	}
	return nil
}

// whyText renders one explanation.
func whyText(b *strings.Builder, e *roots.Explanation, all bool, now time.Time) {
	if !e.Alive {
		with := ""
		if e.DeadWith == 1 {
			with = " with the dead path that keeps it"
		} else if e.DeadWith > 1 {
			with = fmt.Sprintf(" with the %d dead paths that keep it", e.DeadWith)
		}
		fmt.Fprintf(b, "%s is dead: no root keeps it alive; 'storekeeper gc' would delete it%s, freeing %s on disk (%s by NAR size)\n",
			report.Name(e.Path), with, report.FormatSize(e.FreedBytes), report.FormatSize(e.NarBytes))
		return
	}
	chain := func(indent string, c []roots.Link) {
		for i, l := range c {
			if i == 0 {
				fmt.Fprintf(b, "%s%s\n", indent, report.Name(l.Path))
			} else {
				fmt.Fprintf(b, "%s-> %s (%s)\n", indent, report.Name(l.Path), l.Edge)
			}
		}
	}
	if !all {
		fmt.Fprintf(b, "%s is alive\n  root: %s\n", report.Name(e.Path), rootText(*e.Root, now))
		chain("  ", e.Chain)
		return
	}
	n := "1 root keeps it"
	if len(e.Roots) != 1 {
		n = fmt.Sprintf("%d roots keep it", len(e.Roots))
	}
	fmt.Fprintf(b, "%s is alive: %s\n", report.Name(e.Path), n)
	for _, rc := range e.Roots {
		fmt.Fprintf(b, "  root: %s\n", rootText(rc.Root, now))
		chain("    ", rc.Chain)
	}
}

// rootText is "LINK -> TARGET (details)": the kind, and what is known of
// the link (owner, age) or the process (pid, user, what held the path,
// the environment variable, the command line).
func rootText(r roots.Root, now time.Time) string {
	d := []string{string(r.Kind)}
	if r.Owner != "" {
		d = append(d, "owner "+report.Name(r.Owner))
	}
	if r.MTime != 0 {
		t := time.Unix(r.MTime, 0)
		d = append(d, "modified "+t.UTC().Format("2006-01-02 15:04:05 UTC")+", "+age(now.Sub(t)))
	}
	if r.PID != 0 {
		d = append(d, fmt.Sprintf("pid %d", r.PID))
	}
	if r.User != "" {
		d = append(d, "user "+report.Name(r.User))
	}
	if r.Via != "" {
		d = append(d, "via "+report.Name(r.Via))
	}
	if r.Env != "" {
		d = append(d, "variable "+report.Name(r.Env))
	}
	if r.Command != "" {
		d = append(d, "command '"+report.Name(r.Command)+"'")
	}
	return report.Name(r.Link) + " -> " + report.Name(r.Target) + " (" + strings.Join(d, ", ") + ")"
}

// age is a duration as people say it: "5 minutes ago", "3 days ago".
func age(d time.Duration) string {
	if d < 0 {
		return "in the future"
	}
	for _, u := range []struct {
		name string
		d    time.Duration
	}{{"year", 365 * 24 * time.Hour}, {"day", 24 * time.Hour}, {"hour", time.Hour}, {"minute", time.Minute}} {
		if n := int64(d / u.d); n >= 1 {
			if n == 1 {
				return "1 " + u.name + " ago"
			}
			return fmt.Sprintf("%d %ss ago", n, u.name)
		}
	}
	return "just now"
}

// whyDot is a Graphviz digraph of the explanations: each root a box
// (labelled with its link and kind), each path an ellipse labelled with
// its name (a dead path dashed), an edge from a root to its target, and
// the chains' edges, labelled with their kind when not a reference. Nodes
// and edges met in several chains are drawn once. Every label is the
// text form (report.Name) quoted for DOT.
func whyDot(es []*roots.Explanation) string {
	var b strings.Builder
	b.WriteString("digraph why {\n  rankdir=LR;\n  node [fontname=\"monospace\"];\n")
	nodes, edges := map[string]string{}, map[[2]string]bool{}
	node := func(key, attrs string) string {
		if id, ok := nodes[key]; ok {
			return id
		}
		id := fmt.Sprintf("n%d", len(nodes))
		nodes[key] = id
		fmt.Fprintf(&b, "  %s [%s];\n", id, attrs)
		return id
	}
	pathNode := func(p string) string {
		return node("p:"+p, "shape=ellipse, label="+dotQuote(baseName(p)))
	}
	edge := func(from, to, kind string) {
		if edges[[2]string{from, to}] {
			return
		}
		edges[[2]string{from, to}] = true
		if kind == "reference" || kind == "root" {
			fmt.Fprintf(&b, "  %s -> %s;\n", from, to)
		} else {
			fmt.Fprintf(&b, "  %s -> %s [label=%s, style=bold];\n", from, to, dotQuote(kind))
		}
	}
	draw := func(r roots.Root, c []roots.Link) {
		rid := node("r:"+r.String(), "shape=box, label="+dotQuote(r.Link+" ("+string(r.Kind)+")"))
		prev := rid
		for _, l := range c {
			id := pathNode(l.Path)
			edge(prev, id, l.Edge.String())
			prev = id
		}
	}
	for _, e := range es {
		if e == nil {
			continue
		}
		switch {
		case !e.Alive:
			node("p:"+e.Path, "shape=ellipse, style=dashed, label="+dotQuote(baseName(e.Path)+" (dead)"))
		case len(e.Roots) > 0:
			for _, rc := range e.Roots {
				draw(rc.Root, rc.Chain)
			}
		default:
			draw(*e.Root, e.Chain)
		}
	}
	b.WriteString("}\n")
	return b.String()
}

// dotQuote is s as a DOT quoted string: its text form (report.Name: no
// control character, a backslash doubled), then a backslash and a double
// quote escaped for DOT, so Graphviz shows exactly the text form.
func dotQuote(s string) string {
	s = report.Name(s)
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	return `"` + s + `"`
}

// baseName is the last element of a store path.
func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
