package tests

// The systemd units of contrib/systemd, `systemd install`, `man DIR` and
// the shell completions (issue #26).
//
// systemd is not PID 1 here, so the units cannot be started. What is
// checked instead: systemd-analyze verify accepts every installed unit
// with no warning at all (the man pages of Documentation= found through
// `storekeeper man`), and each service's ExecStart= command line, read
// back from the installed file, is run against a store written by real
// Nix under the unit's own restrictions as far as they can be rebuilt
// without systemd: the capability bounding set (setpriv), no new
// privileges, a private network namespace (PrivateNetwork=yes), a
// read-only system where only the ReadWritePaths= are writable
// (ProtectSystem=strict) with the store itself a read-only bind mount as
// on NixOS (ReadWritePaths= keeps it so), and the CPU and I/O
// priorities. Not rebuilt: RestrictAddressFamilies= and the other seccomp
// filters, PrivateTmp= (it would hide the test's binary and store), the
// Protect{Kernel*,Clock,Hostname,ControlGroups} settings (nothing of
// storekeeper's touches those).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// unitFile is an installed unit's settings (comments left out): each
// key's values in order.
type unitFile map[string][]string

func readUnit(t *testing.T, path string) unitFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is no setting", path, line)
		}
		u[k] = append(u[k], v)
	}
	return u
}

func (u unitFile) get(key string) string {
	if v := u[key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// serviceNames are the services of contrib/systemd, in the order the
// run test starts them (gc --auto first: with nix.conf's min-free unset
// it collects nothing; optimise after gc, as OnSuccess= starts it).
var serviceNames = []string{"storekeeper-gc-auto", "storekeeper-gc", "storekeeper-optimise", "storekeeper-verify", "storekeeper-repair"}

var unitNames = []string{
	"storekeeper-gc-auto.service", "storekeeper-gc-auto.timer", "storekeeper-gc.service", "storekeeper-gc.timer",
	"storekeeper-optimise.service", "storekeeper-repair.service", "storekeeper-verify.service", "storekeeper-verify.timer",
}

// installUnits runs `systemd install --dir DIR --bin binary` with extra
// flags and fails the test unless it exits 0.
func installUnits(t *testing.T, dir string, extra ...string) result {
	t.Helper()
	r := run(t, append([]string{"systemd", "install", "--dir", dir, "--bin", binary}, extra...)...)
	if r.code != 0 {
		t.Fatalf("systemd install: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	return r
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("STOREKEEPER_REQUIRE_NIX") == "1" {
			t.Fatal("not root (STOREKEEPER_REQUIRE_NIX=1: this test must run)")
		}
		t.Skip("not root")
	}
}

// requireTool skips the test (or, under STOREKEEPER_REQUIRE_NIX=1, as in
// .ci/run, which installs them, fails it) when the file a tool needs is
// missing: pkg is the Debian package that has it.
func requireTool(t *testing.T, file, pkg string) {
	t.Helper()
	if _, err := os.Stat(file); err != nil {
		msg := fmt.Sprintf("%v (apt-get install -y %s; .ci/run does)", err, pkg)
		if os.Getenv("STOREKEEPER_REQUIRE_NIX") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// TestSystemdAnalyzeVerify: systemd's own checker accepts every unit as
// installed, without a single line of output: unknown or misspelt
// settings, a missing or non-executable ExecStart= binary, a unit that
// OnSuccess= or a timer names but is not there, a Documentation= man
// page that man cannot find (the pages `storekeeper man` writes).
func TestSystemdAnalyzeVerify(t *testing.T) {
	const analyze = "/usr/bin/systemd-analyze"
	requireTool(t, analyze, "systemd")
	units := t.TempDir()
	mdir := t.TempDir()
	installUnits(t, units, "--metrics-dir", mdir)
	manRoot := t.TempDir()
	if r := run(t, "man", filepath.Join(manRoot, "man1")); r.code != 0 {
		t.Fatalf("man: exit %d: %s", r.code, r.stderr)
	}
	var paths []string
	for _, n := range unitNames {
		paths = append(paths, filepath.Join(units, n))
	}
	cmd := exec.Command(analyze, append([]string{"verify"}, paths...)...)
	cmd.Env = append(os.Environ(), "MANPATH="+manRoot, "SYSTEMD_LOG_LEVEL=info")
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The checker does look: a unit naming a missing binary is refused.
	bad := t.TempDir()
	installUnits(t, bad, "--no-metrics")
	data, _ := os.ReadFile(filepath.Join(bad, "storekeeper-gc.service"))
	os.WriteFile(filepath.Join(bad, "storekeeper-gc.service"), bytes.ReplaceAll(data, []byte(binary), []byte(binary+"-missing")), 0o644)
	cmd = exec.Command(analyze, "verify", filepath.Join(bad, "storekeeper-gc.service"), filepath.Join(bad, "storekeeper-optimise.service"))
	cmd.Env = append(os.Environ(), "MANPATH="+manRoot)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "-missing") {
		t.Errorf("systemd-analyze verify accepted a unit running a missing binary: %v\n%s", err, out)
	}
}

// hardenedScript is the shell script that runs "$@" (a unit's ExecStart=)
// under the unit's restrictions, inside the harness's namespace (ROOT/nix
// on /nix). See the file's comment for what is rebuilt and what is not.
func hardenedScript(t *testing.T, u unitFile) string {
	t.Helper()
	var s strings.Builder
	s.WriteString("set -e\n")
	// NixOS: the store is a read-only bind mount.
	s.WriteString("mount --bind /nix/store /nix/store\nmount -o remount,bind,ro /nix/store\n")
	if u.get("ProtectSystem") != "strict" {
		t.Fatalf("ProtectSystem=%s", u.get("ProtectSystem"))
	}
	// ReadWritePaths=: each bound on itself (keeping its mode: the store
	// stays read-only), so that the read-only remounts of / and /nix
	// below leave it as it is.
	for _, v := range u["ReadWritePaths"] {
		for _, p := range strings.Fields(v) {
			optional := strings.HasPrefix(p, "-")
			p = strings.TrimPrefix(p, "-")
			if optional {
				fmt.Fprintf(&s, "if [ -e %s ]; then mount --bind %s %s; fi\n", p, p, p)
			} else {
				fmt.Fprintf(&s, "mount --bind %s %s\n", p, p)
			}
		}
	}
	s.WriteString("mount -o remount,bind,ro /nix\nmount -o remount,bind,ro /\n")
	// Nothing outside the ReadWritePaths is writable now.
	s.WriteString("if touch /nix/probe-rw 2>/dev/null || touch \"$NSROOT/probe-rw\" 2>/dev/null; then echo 'not read-only' >&2; exit 98; fi\n")
	s.WriteString("exec")
	if u.get("PrivateNetwork") == "yes" {
		s.WriteString(" unshare -n")
	}
	s.WriteString(" setpriv --inh-caps=-all --bounding-set=-all")
	for _, c := range strings.Fields(u.get("CapabilityBoundingSet")) {
		s.WriteString(",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	if u.get("NoNewPrivileges") == "yes" {
		s.WriteString(" --no-new-privs")
	}
	if n := u.get("Nice"); n != "" {
		s.WriteString(" nice -n " + n)
	}
	switch u.get("CPUSchedulingPolicy") {
	case "idle":
		s.WriteString(" chrt -i 0")
	case "batch":
		s.WriteString(" chrt -b 0")
	}
	switch u.get("IOSchedulingClass") {
	case "idle":
		s.WriteString(" ionice -c 3")
	case "best-effort":
		s.WriteString(" ionice -c 2 -n " + u.get("IOSchedulingPriority"))
	}
	s.WriteString(" \"$@\"\n")
	return s.String()
}

const unitUser = "skunituser"

// TestSystemdUnitsRun runs every service's ExecStart= as installed, under
// its restrictions (hardenedScript), against a store written by real Nix
// with an unprivileged user's profile in profiles/per-user: each exits
// 0 and writes its metrics file; gc --auto collects nothing with
// min-free unset, and with a min-free above the disk's size every dead
// path and no live one; the gc unit removes exactly the generations its keep policy
// removes (locking the user's profile as that user: CAP_SETUID), then
// collects exactly what real Nix calls dead and nothing it calls live
// (runtime roots read from /proc, two of them in another user's
// processes: an environment variable and a working directory, which
// CAP_SYS_PTRACE lets it read; indirect roots under the test's
// directory); optimise links on a read-only bind-mounted store (the
// remount needs CAP_SYS_ADMIN); real nix-store --verify --check-contents
// passes at the end.
func TestSystemdUnitsRun(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 60, Seed: 2626, Files: 4, Roots: 4, Gens: 2, Leftover: 2, Salt: t.Name()})
	root := ns.Root
	uid, gid := realUser(t, unitUser)
	// The user's profile: 7 generations, 60 to 1 days old, current the
	// newest. The policy (--keep 5 --keep-since 30d) removes 1 and 2.
	udir := filepath.Join(root, "nix/var/nix/profiles/per-user", unitUser)
	mustMkdir(t, udir)
	ages := []int{60, 50, 45, 40, 35, 20, 1}
	for g, age := range ages {
		link := filepath.Join(udir, fmt.Sprintf("profile-%d-link", g+1))
		mustSymlink(t, ns.Outputs[g]["out"], link)
		touchSymlink(t, link, time.Now().Add(-time.Duration(age)*24*time.Hour))
		if err := os.Lchown(link, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	mustSymlink(t, "profile-7-link", filepath.Join(udir, "profile"))
	if err := os.Lchown(filepath.Join(udir, "profile"), uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(udir, uid, gid); err != nil {
		t.Fatal(err)
	}

	units := t.TempDir()
	mdir := filepath.Join(t.TempDir(), "textfile")
	mustMkdir(t, mdir)
	installUnits(t, units, "--metrics-dir", mdir)

	sorted := func(s string) []string {
		f := strings.Fields(s)
		sort.Strings(f)
		return f
	}
	liveBefore := sorted(runNS(t, root, nil, "nix-store", "--gc", "--print-live"))
	// A runtime root of another user's process (a store path named in
	// its environment, as Nix 2.8 takes them): reading that process's
	// /proc/PID/environ takes CAP_SYS_PTRACE.
	held := ""
	for _, outs := range ns.Outputs {
		if p := outs["out"]; !containsString(liveBefore, p) {
			held = p
			break
		}
	}
	if held == "" {
		t.Fatal("no dead path in the fixture")
	}
	holder := exec.Command("setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", gid), "--clear-groups", "env", "SK_UNIT_HELD="+held, "sleep", "600")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	// And another user's process working in a dead store directory (its
	// cwd: reading /proc/PID/cwd takes CAP_SYS_PTRACE), dead also with
	// the first one's closure alive; with an empty environment (no PWD
	// naming it).
	liveBefore = sorted(runNS(t, root, nil, "nix-store", "--gc", "--print-live"))
	heldCwd := ""
	for _, outs := range ns.Outputs {
		p := outs["out"]
		if st, err := os.Stat(filepath.Join(root, p)); err == nil && st.IsDir() && p != held && !containsString(liveBefore, p) {
			heldCwd = p
			break
		}
	}
	if heldCwd == "" {
		t.Fatal("no dead directory in the fixture")
	}
	cwdHolder := nsScript(root, fmt.Sprintf(`cd "$1" && exec env -i setpriv --reuid=%d --regid=%d --clear-groups sleep 600`, uid, gid), heldCwd)
	if err := cwdHolder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cwdHolder.Process.Kill(); cwdHolder.Wait() }()
	for i := 0; ; i++ {
		liveBefore = sorted(runNS(t, root, nil, "nix-store", "--gc", "--print-live"))
		if containsString(liveBefore, held) && containsString(liveBefore, heldCwd) {
			break
		}
		if i == 50 {
			t.Fatalf("real Nix does not take %s (another user's environment) and %s (another user's working directory) as roots", held, heldCwd)
		}
		time.Sleep(100 * time.Millisecond)
	}

	for _, name := range serviceNames {
		u := readUnit(t, filepath.Join(units, name+".service"))
		args := strings.Fields(u.get("ExecStart"))
		if len(args) == 0 || args[0] != binary {
			t.Fatalf("%s: ExecStart=%s does not run %s", name, u.get("ExecStart"), binary)
		}
		prom := filepath.Join(mdir, name+".prom")
		if !strings.Contains(u.get("ExecStart"), "--metrics-file "+prom) {
			t.Errorf("%s: ExecStart=%s does not write %s", name, u.get("ExecStart"), prom)
		}
		r := runCmd(t, nsScript(root, hardenedScript(t, u), args...), args)
		if r.code != 0 {
			t.Fatalf("%s: %s: exit %d\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), r.code, tail(r.stdout, 3000), tail(r.stderr, 3000))
		}
		data, err := os.ReadFile(prom)
		if err != nil || !bytes.Contains(data, []byte("storekeeper_")) {
			t.Errorf("%s: metrics file %s: %v\n%s", name, prom, err, data)
		}
		switch name {
		case "storekeeper-gc-auto":
			if live := sorted(runNS(t, root, nil, "nix-store", "--gc", "--print-live")); !equalStrings(live, liveBefore) {
				t.Errorf("gc --auto without min-free changed the live set")
			}
			if dead := runNS(t, root, nil, "nix-store", "--gc", "--print-dead"); strings.TrimSpace(dead) == "" {
				t.Errorf("gc --auto without min-free collected the dead paths")
			}
			// Again with a min-free above the file system's size: it
			// collects until max-free (unset: everything dead) is free,
			// under the same restrictions, and keeps every root.
			conf := filepath.Join(root, "etc-nix/nix.conf")
			orig, err := os.ReadFile(conf)
			if err != nil {
				t.Fatal(err)
			}
			writeFileMode(t, conf, append(append([]byte{}, orig...), "min-free = 1125899906842624\n"...), 0o644)
			r := runCmd(t, nsScript(root, hardenedScript(t, u), args...), args)
			writeFileMode(t, conf, orig, 0o644)
			t.Logf("gc --auto below min-free:\n%s%s", r.stdout, r.stderr)
			if r.code != 0 {
				t.Fatalf("%s with min-free 1 PiB: exit %d\n%s%s", name, r.code, tail(r.stdout, 3000), tail(r.stderr, 3000))
			}
			if dead := runNS(t, root, nil, "nix-store", "--gc", "--print-dead"); strings.TrimSpace(dead) != "" {
				t.Errorf("gc --auto below min-free left dead paths real Nix finds:\n%s", tail(dead, 2000))
			}
			if live := sorted(runNS(t, root, nil, "nix-store", "--gc", "--print-live")); !equalStrings(live, liveBefore) {
				t.Errorf("gc --auto below min-free changed the live set (%d paths, were %d)", len(live), len(liveBefore))
			}
		case "storekeeper-gc":
			for g := range ages {
				_, err := os.Lstat(filepath.Join(udir, fmt.Sprintf("profile-%d-link", g+1)))
				if removed := g+1 <= 2; removed != os.IsNotExist(err) {
					t.Errorf("generation %d of %s's profile: removed %v, want %v (lstat: %v)", g+1, unitUser, os.IsNotExist(err), removed, err)
				}
			}
			for _, p := range []string{held, heldCwd} {
				if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
					t.Errorf("the gc unit collected %s, a runtime root of another user's process: %v", p, err)
				}
			}
			if dead := runNS(t, root, nil, "nix-store", "--gc", "--print-dead"); strings.TrimSpace(dead) != "" {
				t.Errorf("after the gc unit real Nix still finds dead paths:\n%s", tail(dead, 2000))
			}
			// Live now: what was live, but the removed generations' own
			// closures (gone with them, as Nix collects them).
			live := sorted(runNS(t, root, nil, "nix-store", "--gc", "--print-live"))
			have := map[string]bool{}
			for _, p := range live {
				have[p] = true
			}
			for g := 3; g <= len(ages); g++ {
				if p := ns.Outputs[g-1]["out"]; !have[p] {
					t.Errorf("kept generation %d's path %s is no longer live", g, p)
				}
			}
			for _, p := range live {
				if !containsString(liveBefore, p) {
					t.Errorf("%s is live after gc but was not before", p)
				}
			}
		case "storekeeper-optimise":
			if _, err := os.Stat(filepath.Join(root, "nix/store/.links")); err != nil {
				t.Errorf("optimise on a read-only bind-mounted store linked nothing: %v", err)
			}
		}
	}
	nixVerify(t, root)
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func containsString(s []string, x string) bool {
	i := sort.SearchStrings(s, x)
	return i < len(s) && s[i] == x
}

// dirNames lists dir's entries, sorted.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func unitInode(t *testing.T, p string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestSystemdInstall: --dry-run writes nothing; the units name the binary
// and the metrics directory given; a second install changes nothing; a
// unit edited by hand or a symlink at a unit's name (systemctl mask) is
// refused, before anything is written, unless --force, which replaces
// the symlink itself and never writes where it points; directories and
// paths that cannot be written safely are refused.
func TestSystemdInstall(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	mdir := t.TempDir()
	r := run(t, "systemd", "install", "--dir", dir, "--bin", binary, "--metrics-dir", mdir, "--dry-run")
	if r.code != 0 {
		t.Fatalf("--dry-run: exit %d: %s", r.code, r.stderr)
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Fatalf("--dry-run wrote %v", names)
	}
	for _, n := range unitNames {
		if !strings.Contains(r.stdout, "would-install "+filepath.Join(dir, n)+"\n") {
			t.Errorf("--dry-run does not say it would install %s:\n%s", n, r.stdout)
		}
	}
	enable := "systemctl daemon-reload && systemctl enable --now storekeeper-gc-auto.timer storekeeper-gc.timer storekeeper-verify.timer"
	if !strings.Contains(r.stdout, enable) {
		t.Errorf("no enable line %q in:\n%s", enable, r.stdout)
	}

	r = installUnits(t, dir, "--metrics-dir", mdir)
	if names := dirNames(t, dir); !equalStrings(names, unitNames) {
		t.Fatalf("installed %v, want %v", names, unitNames)
	}
	for _, n := range unitNames {
		p := filepath.Join(dir, n)
		st, err := os.Lstat(p)
		if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o644 {
			t.Errorf("%s: %v %v, want a regular file 0644", p, st.Mode(), err)
		}
		if !strings.HasSuffix(n, ".service") {
			continue
		}
		u := readUnit(t, p)
		args := strings.Fields(u.get("ExecStart"))
		if args[0] != binary || !strings.Contains(u.get("ExecStart"), "--metrics-file "+mdir+"/") {
			t.Errorf("%s: ExecStart=%s", n, u.get("ExecStart"))
		}
		if !strings.Contains(strings.Join(u["ReadWritePaths"], " "), "-"+mdir) {
			t.Errorf("%s: ReadWritePaths=%v lacks -%s", n, u["ReadWritePaths"], mdir)
		}
	}
	if !strings.Contains(r.stdout, "installed "+filepath.Join(dir, "storekeeper-gc.service")) || !strings.Contains(r.stdout, enable) {
		t.Errorf("install output:\n%s", r.stdout)
	}

	// Again: nothing changes, not even an inode.
	gcUnit := filepath.Join(dir, "storekeeper-gc.service")
	ino := unitInode(t, gcUnit)
	r = installUnits(t, dir, "--metrics-dir", mdir)
	if strings.Count(r.stdout, "unchanged ") != len(unitNames) || unitInode(t, gcUnit) != ino {
		t.Errorf("a second install rewrote files:\n%s", r.stdout)
	}

	// An edited unit is refused, and nothing else is written meanwhile
	// (a removed unit stays absent).
	edited := []byte("[Service]\nExecStart=/bin/true\n")
	writeFileMode(t, gcUnit, edited, 0o644)
	os.Remove(filepath.Join(dir, "storekeeper-verify.timer"))
	r = run(t, "systemd", "install", "--dir", dir, "--bin", binary, "--metrics-dir", mdir)
	if r.code != 2 || !strings.Contains(r.stderr, gcUnit) || !strings.Contains(r.stderr, "--force") {
		t.Errorf("an edited unit: exit %d, want 2 naming it and --force:\n%s", r.code, r.stderr)
	}
	if data, _ := os.ReadFile(gcUnit); !bytes.Equal(data, edited) {
		t.Errorf("the edited unit was changed without --force")
	}
	if _, err := os.Lstat(filepath.Join(dir, "storekeeper-verify.timer")); !os.IsNotExist(err) {
		t.Errorf("a refused install wrote other units: %v", err)
	}

	// A symlink at a unit's name (a masked unit, or a link to a file
	// elsewhere) is refused, and with --force replaced, never followed.
	victim := filepath.Join(t.TempDir(), "victim")
	writeFileMode(t, victim, []byte("precious\n"), 0o644)
	optUnit := filepath.Join(dir, "storekeeper-optimise.service")
	os.Remove(optUnit)
	mustSymlink(t, victim, optUnit)
	r = run(t, "systemd", "install", "--dir", dir, "--bin", binary, "--metrics-dir", mdir)
	if r.code != 2 || !strings.Contains(r.stderr, optUnit+" (a symlink)") {
		t.Errorf("a symlink at a unit's name: exit %d, want 2 naming it:\n%s", r.code, r.stderr)
	}
	r = run(t, "systemd", "install", "--dir", dir, "--bin", binary, "--metrics-dir", mdir, "--force", "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, "would-replace "+optUnit+" (a symlink)") || !strings.Contains(r.stdout, "would-replace "+gcUnit+" (differs)") {
		t.Errorf("--force --dry-run: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if fi, err := os.Lstat(optUnit); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("--force --dry-run replaced the symlink: %v", err)
	}
	r = installUnits(t, dir, "--metrics-dir", mdir, "--force")
	if data, _ := os.ReadFile(victim); string(data) != "precious\n" {
		t.Errorf("install wrote through the symlink into %s: %q", victim, data)
	}
	if fi, err := os.Lstat(optUnit); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("--force left %s as %v, %v", optUnit, fi.Mode(), err)
	}
	if names := dirNames(t, dir); !equalStrings(names, unitNames) {
		t.Errorf("after --force: %v (a temporary file left?)", names)
	}

	// --no-metrics: no --metrics-file, no metrics ReadWritePaths.
	plain := t.TempDir()
	installUnits(t, plain, "--no-metrics")
	data, _ := os.ReadFile(filepath.Join(plain, "storekeeper-verify.service"))
	if bytes.Contains(data, []byte("--metrics-file")) || bytes.Contains(data, []byte("ReadWritePaths=-")) {
		t.Errorf("--no-metrics:\n%s", data)
	}

	// A binary in the store: written, with a warning (a collection would
	// delete it after an upgrade).
	storeDir := filepath.Join(t.TempDir(), "store")
	mustMkdir(t, filepath.Join(storeDir, "abc-storekeeper/bin"))
	inStore := filepath.Join(storeDir, "abc-storekeeper/bin/storekeeper")
	if out, err := exec.Command("cp", binary, inStore).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	r = run(t, "--store-dir", storeDir, "systemd", "install", "--dir", t.TempDir(), "--bin", inStore, "--no-metrics")
	if r.code != 0 || !strings.Contains(r.stderr, "warning: the units will run "+inStore+", in the store") {
		t.Errorf("a binary in the store: exit %d, no warning:\n%s", r.code, r.stderr)
	}

	// Refusals: nothing written, exit 2.
	uid, gid := realUser(t, unitUser)
	foreign := t.TempDir()
	os.Chown(foreign, uid, gid)
	open := t.TempDir()
	os.Chmod(open, 0o777)
	spaced := filepath.Join(t.TempDir(), "my bin")
	mustMkdir(t, spaced)
	copyBinary := filepath.Join(spaced, "storekeeper")
	if out, err := exec.Command("cp", binary, copyBinary).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	for _, c := range []struct {
		args []string
		dir  string
		want string
	}{
		{[]string{"--dir", foreign, "--bin", binary}, foreign, "belongs to uid"},
		{[]string{"--dir", open, "--bin", binary}, open, "writable by others"},
		{[]string{"--dir", plain + "-none", "--bin", binary}, "", "no such file"},
		{[]string{"--dir", dir + "2", "--bin", "storekeeper"}, "", "absolute path"},
		{[]string{"--dir", dir + "2", "--bin", binary + "-missing"}, "", "not there"},
		{[]string{"--dir", open, "--bin", copyBinary}, open, "white space"},
		{[]string{"--dir", open, "--bin", binary, "--metrics-dir", "/var/lib/%n"}, open, "white space"},
	} {
		r := run(t, append([]string{"systemd", "install"}, c.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("install %v: exit %d, want 2 with %q:\n%s", c.args, r.code, c.want, r.stderr)
		}
		if c.dir != "" {
			if names := dirNames(t, c.dir); len(names) != 0 {
				t.Errorf("install %v wrote %v", c.args, names)
			}
		}
	}
}

// helpCommands lists every command `--help` shows, recursively, as their
// page names (storekeeper-lock-status), from the help text alone.
func helpCommands(t *testing.T, path []string) []string {
	t.Helper()
	r := run(t, append(append([]string{}, path...), "--help")...)
	if r.code != 0 {
		t.Fatalf("%v --help: exit %d", path, r.code)
	}
	out := []string{strings.Join(append([]string{"storekeeper"}, path...), "-")}
	_, list, ok := strings.Cut(r.stdout, "Available Commands:\n")
	if !ok {
		return out
	}
	for _, line := range strings.Split(list, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(line, "  ") {
			break
		}
		if f[0] == "help" {
			continue
		}
		out = append(out, helpCommands(t, append(append([]string{}, path...), f[0]))...)
	}
	return out
}

// TestManPages: `man DIR` writes one page per command --help lists, and
// man -l and groff render each without a warning, with its sections;
// help text reaches the page as written (a <store> is not taken for a
// tag, a leading dot for a request); a symlink at a page's name is
// replaced, never followed.
func TestManPages(t *testing.T) {
	requireRoot(t)
	requireTool(t, "/usr/bin/man", "man-db")
	requireTool(t, "/usr/bin/groff", "groff-base")
	dir := filepath.Join(t.TempDir(), "man1")
	victim := filepath.Join(t.TempDir(), "victim")
	writeFileMode(t, victim, []byte("precious\n"), 0o644)
	mustMkdir(t, dir)
	mustSymlink(t, victim, filepath.Join(dir, "storekeeper-gc.1"))
	r := run(t, "man", dir)
	if r.code != 0 {
		t.Fatalf("man: exit %d: %s", r.code, r.stderr)
	}
	if data, _ := os.ReadFile(victim); string(data) != "precious\n" {
		t.Errorf("man wrote through a symlink: %q", data)
	}
	want := helpCommands(t, nil)
	for _, w := range []string{"storekeeper-gc", "storekeeper-systemd-install", "storekeeper-man", "storekeeper-completion-bash", "storekeeper-lock-status"} {
		if !containsString(func() []string { sort.Strings(want); return want }(), w) {
			t.Fatalf("--help does not list %s: %v", w, want)
		}
	}
	var wantFiles []string
	for _, w := range want {
		wantFiles = append(wantFiles, w+".1")
	}
	sort.Strings(wantFiles)
	if got := dirNames(t, dir); !equalStrings(got, wantFiles) {
		t.Fatalf("pages %v\nwant %v", got, wantFiles)
	}
	for _, name := range wantFiles {
		page := filepath.Join(dir, name)
		g := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", page)
		if out, err := g.CombinedOutput(); err != nil || len(out) != 0 {
			t.Errorf("groff on %s: %v\n%s", name, err, out)
		}
		m := exec.Command("man", "-l", page)
		m.Env = append(os.Environ(), "MANPAGER=cat", "PAGER=cat", "MANWIDTH=100", "LANG=C.UTF-8")
		var out, errb bytes.Buffer
		m.Stdout, m.Stderr = &out, &errb
		if err := m.Run(); err != nil || errb.Len() != 0 {
			t.Errorf("man -l %s: %v\n%s", name, err, errb.String())
			continue
		}
		text := out.String()
		sections := []string{"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS"}
		if name != "storekeeper.1" {
			sections = append(sections, "GLOBAL OPTIONS", "SEE ALSO")
		}
		for _, sec := range sections {
			if !regexp.MustCompile(`(?m)^` + sec + `$`).MatchString(text) {
				t.Errorf("%s has no %s section:\n%s", name, sec, tail(text, 1500))
			}
		}
		if !strings.Contains(text, "130") || !strings.Contains(text, "interrupted by SIGINT") {
			t.Errorf("%s: EXIT STATUS lacks 130", name)
		}
		switch name {
		case "storekeeper-gc.1":
			for _, s := range []string{"storekeeper-gc - Collect garbage", "<store>/trash", "--keep-since", "--delete-older-than", "storekeeper(1)"} {
				if !strings.Contains(text, s) {
					t.Errorf("storekeeper-gc.1 lacks %q:\n%s", s, text)
				}
			}
		case "storekeeper-systemd-install.1":
			// An aligned table stays aligned.
			if !regexp.MustCompile(`(?m)^\s+storekeeper-gc\.service, \.timer {8}daily at 03:15`).MatchString(text) {
				t.Errorf("storekeeper-systemd-install.1: the units' table is not kept as written:\n%s", text)
			}
		case "storekeeper-lock.1":
			if !strings.Contains(text, "storekeeper-lock-status(1)") || !strings.Contains(text, "COMMANDS") {
				t.Errorf("storekeeper-lock.1 does not list its subcommands:\n%s", text)
			}
		}
	}
}

// TestCompletion: `completion bash` is sourced by bash without error and
// completes commands and flags through the binary; zsh's and fish's
// scripts are there too (and parsed by those shells where installed).
func TestCompletion(t *testing.T) {
	const bashCompletion = "/usr/share/bash-completion/bash_completion"
	requireTool(t, bashCompletion, "bash-completion") // cobra's bash script needs it
	script := `set -e
source ` + bashCompletion + `
source <("$SK" completion bash)
complete -p storekeeper
# compopt works only while bash itself runs a completion.
compopt() { :; }
COMP_LINE="storekeeper sys"; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(storekeeper sys); COMP_CWORD=1
__start_storekeeper storekeeper sys storekeeper
echo "commands: ${COMPREPLY[*]}"
COMP_LINE="storekeeper gc --keep-s"; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(storekeeper gc --keep-s); COMP_CWORD=2
__start_storekeeper storekeeper --keep-s gc
echo "flags: ${COMPREPLY[*]}"
# Subcommands of subcommands, and their own flags.
c() { COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMP_WORDS=("$@"); COMP_CWORD=$(($#-1)); COMPREPLY=()
  __start_storekeeper storekeeper "${@: -1}" "${@: -2:1}"; echo "$*: ${COMPREPLY[*]}"; }
c storekeeper roots w
c storekeeper lock pr
c storekeeper db va
c storekeeper db vacuum --ch
c storekeeper systemd install --dr
`
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "SK="+binary, "PATH="+filepath.Dir(binary)+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	for _, want := range []string{"complete -o default -F __start_storekeeper storekeeper", "commands: systemd", "flags: --keep-since",
		"storekeeper roots w: why\n", "storekeeper lock pr: prune\n", "storekeeper db va: vacuum\n",
		"storekeeper db vacuum --ch: --check\n", "storekeeper systemd install --dr: --dry-run\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("bash completion: no %q in:\n%s", want, out)
		}
	}
	// Directories only where a directory is asked for.
	for _, args := range [][]string{{"man", ""}, {"systemd", "install", "--dir", ""}, {"systemd", "install", "--metrics-dir", ""}} {
		r := run(t, append([]string{"__complete"}, args...)...)
		if !strings.Contains(r.stdout, ":16\n") || !strings.Contains(r.stderr, "ShellCompDirectiveFilterDirs") {
			t.Errorf("completing %q: not directories only (directive 16):\n%s%s", args, r.stdout, r.stderr)
		}
	}
	for _, c := range []struct{ shell, head, check string }{
		{"zsh", "#compdef storekeeper", "zsh -n"},
		{"fish", "complete -c storekeeper", "fish --no-execute"},
	} {
		r := run(t, "completion", c.shell)
		if r.code != 0 || !strings.Contains(r.stdout, c.head) {
			t.Errorf("completion %s: exit %d, no %q:\n%s", c.shell, r.code, c.head, tail(r.stdout, 500))
			continue
		}
		f := strings.Fields(c.check)
		if _, err := exec.LookPath(f[0]); err != nil {
			t.Logf("%s is not installed: its script is not parsed", f[0])
			continue
		}
		p := filepath.Join(t.TempDir(), "completion."+c.shell)
		writeFileMode(t, p, []byte(r.stdout), 0o644)
		if out, err := exec.Command(f[0], append(f[1:], p)...).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", c.check, err, out)
		}
	}
}

// touchSymlink sets the mtime of the symlink p itself (touch -h): a
// profile generation's time, as Nix reads it.
func touchSymlink(t *testing.T, p string, at time.Time) {
	t.Helper()
	if out, err := exec.Command("touch", "-h", "-d", at.UTC().Format("2006-01-02 15:04:05 UTC"), p).CombinedOutput(); err != nil {
		t.Fatalf("touch -h %s: %v %s", p, err, out)
	}
}

// TestSystemdGCSocketSeen: while the gc unit collects under its
// restrictions (gc.lock held, the gc socket served), `storekeeper lock
// status` run outside the unit, as an admin would, sees the socket
// served. The kernel lists a Unix socket's listener (unix_diag, ss -xl)
// only in its own network namespace: with PrivateNetwork=yes the
// collection's socket, which every Nix client does reach through the
// file system, was reported "not served (no process listens on it)"
// with the GC lock held, a false diagnosis of every stuck build.
func TestSystemdGCSocketSeen(t *testing.T) {
	requireRoot(t)
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 2628, Roots: 2, Salt: t.Name()})
	units := t.TempDir()
	mdir := filepath.Join(t.TempDir(), "textfile")
	mustMkdir(t, mdir)
	installUnits(t, units, "--metrics-dir", mdir)
	for _, name := range []string{"storekeeper-gc", "storekeeper-gc-auto"} {
		u := readUnit(t, filepath.Join(units, name+".service"))
		if u.get("PrivateNetwork") == "yes" {
			t.Errorf("%s: PrivateNetwork=yes hides the gc socket's listener from lock status", name)
		}
	}
	u := readUnit(t, filepath.Join(units, "storekeeper-gc.service"))
	args := strings.Fields(u.get("ExecStart"))
	dir := t.TempDir()
	script := `
mkfifo "$DIR/sync"
_STOREKEEPER_TEST_GC_SYNC="$DIR/sync" unshare -m --propagation private sh -c "$HARDENED" hardened "$@" > "$DIR/gc.out" 2> "$DIR/gc.err" & gc=$!
i=0; while [ ! -S /nix/var/nix/gc-socket/socket ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
sleep 0.3
"$BIN" lock status --json > "$DIR/status.json" 2> "$DIR/status.err"
echo "STATUS $?"
timeout 60 sh -c 'echo go > "$DIR/sync"'
wait $gc; echo "GC $?"
`
	cmd := nsScript(ns.Root, script, args...)
	cmd.Env = append(cmd.Env, "DIR="+dir, "BIN="+binary, "HARDENED="+hardenedScript(t, u))
	out, err := cmd.CombinedOutput()
	gcErr, _ := os.ReadFile(filepath.Join(dir, "gc.err"))
	if err != nil || !strings.Contains(string(out), "GC 0") || !strings.Contains(string(out), "STATUS 0") {
		statusErr, _ := os.ReadFile(filepath.Join(dir, "status.err"))
		t.Fatalf("the gc unit with lock status during its collection: %v\n%s\ngc stderr: %s\nstatus stderr: %s", err, out, tail(string(gcErr), 2000), statusErr)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "status.json"))
	var env struct {
		Result struct {
			GCRunning       bool   `json:"gc_running"`
			GCSocketAccepts bool   `json:"gc_socket_accepts"`
			GCSocketError   string `json:"gc_socket_error"`
		} `json:"result"`
	}
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatalf("lock status --json: %v\n%s", err, data)
	}
	if !env.Result.GCRunning || !env.Result.GCSocketAccepts {
		t.Errorf("lock status during the gc unit's collection: gc_running %v, gc_socket_accepts %v (%s), want both true\n%s",
			env.Result.GCRunning, env.Result.GCSocketAccepts, env.Result.GCSocketError, data)
	}
}

// TestManDirUmask: the directory `man DIR` creates is readable by every
// user, as the pages in it are (0644), whatever the umask: with root's
// umask 077 (a hardened system) a new /usr/local/share/man/man1 was 0700
// and no other user could read a page.
func TestManDirUmask(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "man1")
	out, err := exec.Command("sh", "-c", `umask 077 && exec "$0" man "$1"`, binary, dir).CombinedOutput()
	if err != nil {
		t.Fatalf("man: %v\n%s", err, out)
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o755 {
		t.Errorf("man created %s with mode %v under umask 077, want 0755", dir, st.Mode().Perm())
	}
	st, err = os.Stat(filepath.Join(dir, "storekeeper.1"))
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("storekeeper.1: %v %v, want mode 0644", err, st)
	}
}
