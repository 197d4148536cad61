package tests

import (
	"os/exec"
	"sort"
	"strings"
	"testing"
)

// importRules says which of storekeeper's packages each package may
// import (production code, not tests): imports run one way, cmd →
// capabilities → store → lock, with report a leaf anyone may use. A
// package not listed here may import nothing of storekeeper until a rule
// is added for it, so a new package states its place in the README's
// Architecture map and here.
var importRules = map[string][]string{
	"cmd/storekeeper": {"gc", "optimise", "repair", "report", "roots", "store", "store/db", "store/fs", "verify", "verify/finding", "substitute", "lock", "nix/nixconf", "nix/signature", "nix/storepath", "nix/validity", "register", "transfer", "metrics", "contrib/systemd", "internal/atomicfile"},
	"cmd/mkdemostore": {"store/storetest"},
	// capabilities: each uses the layers below, never another capability
	// (but gc → roots: the collector's roots are roots')
	"gc":       {"roots", "graph", "store", "store/db", "store/fs", "store/usage", "nix/storepath", "lock", "report", "internal/sys"},
	"optimise": {"graph", "store", "store/db", "store/fs", "nix/nar", "nix/storepath", "lock", "report", "internal/sys", "internal/varint"},
	"roots":    {"graph", "store", "store/db", "store/usage", "nix/storepath", "lock", "report", "internal/sys", "internal/procfs"},
	"verify":   {"graph", "store", "store/db", "store/fs", "nix/nar", "nix/signature", "nix/storepath", "report", "internal/varint", "verify/finding"},
	// repair carries out the remedies of verify's findings: it uses their
	// types (verify/finding), never verify's audit
	"repair": {"verify/finding", "substitute", "store", "store/db", "store/fs", "nix/nar", "nix/storepath", "lock", "report", "internal/sys"},
	// substitute finds and streams paths from binary caches and other
	// local stores; it never writes to a store
	"substitute":     {"store", "store/db", "store/fs", "nix/nar", "nix/narinfo", "nix/signature", "nix/compression", "nix/nixconf", "nix/storepath", "lock", "report", "internal/sys"},
	"verify/finding": {"nix/nar", "store/fs", "report"},
	// register takes trees already in a store directory into the store
	// (checks, canonicalisation, hashes, references, the transaction)
	"register": {"store", "store/db", "store/fs", "lock", "nix/nar", "nix/refscan", "nix/derivation", "nix/storepath", "report", "internal/sys"},
	// transfer copies closures into another store and registers them
	// there through register
	"transfer": {"register", "store", "store/db", "store/fs", "lock", "nix/nar", "nix/storepath", "report", "internal/sys"},
	// the store-access layer: store opens, store/db and store/fs below it
	"store":           {"graph", "store/db", "store/fs", "nix/nixconf", "nix/storepath", "lock", "report"},
	"store/db":        {"graph", "store/fs", "nix/nar", "nix/storepath", "lock", "report"},
	"store/fs":        {"internal/sys", "internal/procfs", "report"},
	"store/storetest": {"store", "store/db", "store/fs", "nix/nar", "nix/nixconf", "nix/storepath", "nix/derivation"},
	"store/usage":     {"internal/sys"}, // what store entries hold on disk, counting hard links
	// the reference graph and what is computed on it: no SQL, no file I/O
	// (nix/nar only for the type of the NAR hash column)
	"graph": {"nix/nar"},
	// pure formats: nothing of storekeeper but the system-call layer
	"nix/storepath":   {},
	"nix/nar":         {"nix/storepath", "internal/sys"},
	"nix/nixconf":     {},
	"nix/compression": {},
	"nix/validity":    {"nix/nar", "nix/storepath"},
	"nix/refscan":     {"nix/storepath"},
	"nix/derivation":  {"nix/storepath"},
	"nix/signature":   {"nix/nar"},
	"nix/narinfo":     {"nix/nar", "nix/signature", "nix/storepath"},
	"lock":            {"internal/sys", "internal/procfs", "nix/storepath"}, // storepath: which store-directory names are path locks (lock prune)
	"internal/sys":    {},
	"internal/procfs": {}, // bounded reads of /proc/PID and /proc/self/mountinfo (lock, roots, store/fs)
	"internal/varint": {},
	"report":          {},
	"metrics":         {"internal/atomicfile"}, // the text exposition format node_exporter reads (a leaf like report but for its file writer)
	"contrib/systemd": {},                      // the systemd units (data, embedded) and Render: `systemd install`
	"bench/linkfloor": {"nix/nar", "internal/sys"},
	"bench/readfloor": {},
	"tests":           {},
	// atomic, symlink-safe file writes (metrics files, systemd units, man pages)
	"internal/atomicfile": {"report"}, // report.Name in its messages
}

// TestImportDirection fails when a package imports one of storekeeper's
// packages that the Architecture map does not allow (capabilities never
// import each other but gc → roots and repair → verify/finding; store
// imports no capability; lock and report import nothing of storekeeper;
// nothing imports cmd).
func TestImportDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "storekeeper/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const mod = "storekeeper/"
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg := strings.TrimPrefix(f[0], mod)
		allowed, known := importRules[pkg]
		seen++
		var bad []string
		for _, imp := range f[1:] {
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			dep := strings.TrimPrefix(imp, mod)
			ok := false
			for _, a := range allowed {
				ok = ok || a == dep
			}
			if !ok {
				bad = append(bad, dep)
			}
		}
		sort.Strings(bad)
		switch {
		case !known && len(bad) > 0:
			t.Errorf("package %s imports %v and has no rule in importRules: give it a place in the README's Architecture map and a rule here", pkg, bad)
		case len(bad) > 0:
			t.Errorf("package %s imports %v, against the import direction (allowed: %v)", pkg, bad, allowed)
		}
	}
	if seen < len(importRules)-2 {
		t.Fatalf("go list listed only %d packages:\n%s", seen, out)
	}
}
