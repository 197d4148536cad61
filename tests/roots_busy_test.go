package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// busyHolderJSON is one holder in `roots busy --json`.
type busyHolderJSON struct {
	PID         int    `json:"pid"`
	User        string `json:"user"`
	Command     string `json:"command"`
	Via         string `json:"via"`
	Link        string `json:"link"`
	File        string `json:"file"`
	Env         string `json:"env"`
	RuntimeRoot bool   `json:"runtime_root"`
}

// busyJSON is `roots busy --json`'s envelope.
type busyJSON struct {
	Command string `json:"command"`
	OK      bool   `json:"ok"`
	Result  struct {
		StoreDir string `json:"store_dir"`
		Paths    []struct {
			Path        string           `json:"path"`
			Valid       bool             `json:"valid"`
			RuntimeRoot bool             `json:"runtime_root"`
			Holders     []busyHolderJSON `json:"holders"`
		} `json:"paths"`
		Processes          int            `json:"processes"`
		Holding            int            `json:"holding"`
		Uninspectable      int            `json:"uninspectable"`
		UninspectableUsers map[string]int `json:"uninspectable_users"`
	} `json:"result"`
}

// busyHeld is a holder with the path it holds.
type busyHeld struct {
	busyHolderJSON
	Path  string
	Valid bool
}

func parseBusy(t *testing.T, who string, r result) (busyJSON, map[int][]busyHeld) {
	t.Helper()
	var b busyJSON
	if err := json.Unmarshal([]byte(r.stdout), &b); err != nil || r.code != 0 || !b.OK {
		t.Fatalf("%s: roots busy --json: exit %d, %v\n%s\n%s", who, r.code, err, tail(r.stdout, 3000), r.stderr)
	}
	byPID := map[int][]busyHeld{}
	for _, p := range b.Result.Paths {
		for _, h := range p.Holders {
			byPID[h.PID] = append(byPID[h.PID], busyHeld{h, p.Path, p.Valid})
		}
	}
	return b, byPID
}

// rootLinesUnder is rootLines(out) limited to the roots whose link
// starts with prefix (a process's "/proc/PID/").
func rootLinesUnder(out, prefix string) map[string]bool {
	set := map[string]bool{}
	for l := range rootLines(out) {
		if strings.HasPrefix(l, prefix) {
			set[l] = true
		}
	}
	return set
}

// storeDirsAndFile returns the output paths of ns that are directories,
// and a regular file inside one of them.
func storeDirsAndFile(t *testing.T, ns *nixStore) (dirs []string, file string) {
	t.Helper()
	for _, outs := range ns.Outputs {
		for _, p := range outs {
			if st, err := os.Stat(filepath.Join(ns.Root, p)); err == nil && st.IsDir() {
				dirs = append(dirs, p)
			}
		}
	}
	sort.Strings(dirs)
	if len(dirs) < 5 {
		t.Fatalf("only %d store paths are directories", len(dirs))
	}
	return dirs, dirs[0] + "/nix-support/deps"
}

// userBinary copies the storekeeper binary to root/storekeeper, mode
// 0755, for an unprivileged user to run (the test binary's directory is
// 0700), and returns its path.
func userBinary(t *testing.T, root string) string {
	t.Helper()
	data, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "storekeeper")
	writeFileMode(t, bin, data, 0o755)
	return bin
}

// TestRootsBusy: real processes in the store's namespace hold store paths
// every way a process can: a variable of its environment names one
// (SK_BUSY_VAR, as sudo's SUDO_COMMAND does, NixOS/nix#7053), one's
// working directory is in one, one reads a store file on its stdin, one
// runs a program that is a store path of its own (exe and maps), and a
// process of an unprivileged user has its working directory in another.
// `roots busy` names each with its pid, user, command and how it holds
// the path (the variable's name), as root in text and JSON; the runtime
// roots among them are exactly the ones real `nix-store --gc
// --print-roots` lists for these processes; `roots --json` and `roots why
// --all --json` show the environment root with the variable's name and
// the user. As the unprivileged user, busy lists that user's process and
// counts root's as uninspectable. For the store at its root directory
// seen from outside (--store ROOT), only what is under ROOT/nix/store
// counts.
func TestRootsBusy(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 10, Seed: 26, Salt: "roots-busy"})
	for d := ns.Root; d != "/" && d != "/tmp"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	uid, gid := realUser(t, "sk-roots-busy")
	userBin := userBinary(t, ns.Root)
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	sleepData, err := os.ReadFile(sleepBin)
	if err != nil {
		t.Fatal(err)
	}
	sleepCopy := filepath.Join(t.TempDir(), "sk-busy-sleep")
	writeFileMode(t, sleepCopy, sleepData, 0o755)

	dirs, fdFile := storeDirsAndFile(t, ns)
	envPath, cwdPath, userPath, hostPath := dirs[1], dirs[2], dirs[3], dirs[4]
	fdPath := dirs[0]
	// The paths are positional parameters, never exported: no process's
	// environment names a store path but SK_BUSY_VAR's.
	holders := nsScript(ns.Root, `
exe=$(nix-store --add "$1") || exit 1
echo "EXE $exe"
SK_BUSY_VAR="$2" sleep 60 & echo "ENV $!"
(cd "$3" && exec sleep 60) & echo "CWD $!"
sleep 60 < "$4" & echo "FD $!"
"$exe" 60 & echo "MAP $!"
setpriv --reuid="$6" --regid="$7" --clear-groups sh -c 'cd "$1" && exec sleep 60' sh "$5" & echo "USER $!"
echo READY
exec sleep 120
`, sleepCopy, envPath, cwdPath, fdFile, userPath, strconv.Itoa(uid), strconv.Itoa(gid))
	out, err := holders.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	holders.Stderr = os.Stderr
	startGroup(t, holders)
	pids := map[string]int{}
	var exePath string
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 1 && f[0] == "READY":
				ready <- nil
				return
			case len(f) == 2 && f[0] == "EXE":
				exePath = f[1]
			case len(f) == 2:
				pids[f[0]], _ = strconv.Atoi(f[1])
			}
		}
		ready <- fmt.Errorf("the holders' script ended before READY: %v", sc.Err())
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the holders' script did not start in 60 s")
	}
	// Each holder has exec'd its sleep (the shell's fork holds nothing
	// yet).
	deadline := time.Now().Add(15 * time.Second)
	for what, pid := range pids {
		for {
			l, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
			if strings.HasSuffix(l, "sleep") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s (pid %d) did not start sleep: exe %q", what, pid, l)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	nsRun := func(asUser bool, args ...string) result {
		t.Helper()
		enter := []string{"-t", strconv.Itoa(holders.Process.Pid), "-m"}
		bin := binary
		if asUser {
			enter = append(enter, "-S", strconv.Itoa(uid), "-G", strconv.Itoa(gid))
			bin = userBin
		}
		cmd := exec.Command("nsenter", append(append(enter, "--", bin), args...)...)
		cmd.Env = append(os.Environ(), "NIX_CONF_DIR="+filepath.Join(ns.Root, "etc-nix"))
		return runCmd(t, cmd, args)
	}

	// As root: every holding, with the variable's name and the user.
	b, byPID := parseBusy(t, "root", nsRun(false, "--json", "roots", "busy"))
	if b.Command != "roots busy" || b.Result.StoreDir != "/nix/store" {
		t.Errorf("command %q, store dir %q", b.Command, b.Result.StoreDir)
	}
	type want struct {
		what, path, via, file, env, user string
	}
	wants := []want{
		{"ENV", envPath, "environ", envPath, "SK_BUSY_VAR", "root"},
		{"CWD", cwdPath, "cwd", cwdPath, "", "root"},
		{"FD", fdPath, "fd", fdFile, "", "root"},
		{"MAP", exePath, "exe", exePath, "", "root"},
		{"MAP", exePath, "maps", exePath, "", "root"},
		{"USER", userPath, "cwd", userPath, "", "sk-roots-busy"},
	}
	for _, w := range wants {
		pid := pids[w.what]
		found := false
		for _, h := range byPID[pid] {
			if h.Path == w.path && h.Via == w.via {
				found = true
				if h.File != w.file || h.Env != w.env || h.User != w.user || !h.Valid || !h.RuntimeRoot ||
					!strings.HasSuffix(h.Command, "sleep 60") && w.what != "MAP" {
					t.Errorf("%s: holder %+v, want file %s env %q user %s, valid runtime root", w.what, h, w.file, w.env, w.user)
				}
				if w.via == "fd" && h.Link != fmt.Sprintf("/proc/%d/fd/0", pid) {
					t.Errorf("FD: link %s, want fd 0", h.Link)
				}
			}
		}
		if !found {
			t.Errorf("%s (pid %d): no %s holding of %s in %+v", w.what, pid, w.via, w.path, byPID[pid])
		}
	}
	for what, pid := range pids {
		for _, h := range byPID[pid] {
			// The shell exports PWD after cd: Nix takes it as a root too.
			if h.Via == "environ" && h.Env != "SK_BUSY_VAR" && !(h.Env == "PWD" && (what == "CWD" || what == "USER")) {
				t.Errorf("%s: an environment variable other than SK_BUSY_VAR names a store path: %+v", what, h)
			}
		}
	}

	// Nix agrees on which of these holdings are runtime roots. (Nix
	// fails on any process whose working directory is longer than
	// PATH_MAX, as the roots package's walk tests make for a moment: try
	// again.)
	var printRoots result
	for try := 0; try < 20; try++ {
		printRoots = runNSAll(t, ns.Root, "nix-store", "--gc", "--print-roots")
		if printRoots.code == 0 || !strings.Contains(printRoots.stderr, "File name too long") {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if printRoots.code != 0 {
		t.Fatalf("nix-store --gc --print-roots: exit %d\n%s", printRoots.code, printRoots.stderr)
	}
	nixRoots := map[string]bool{}
	for l := range rootLines(printRoots.stdout) {
		for _, pid := range pids {
			if strings.HasPrefix(l, fmt.Sprintf("/proc/%d/", pid)) {
				nixRoots[l] = true
			}
		}
	}
	ourRoots := map[string]bool{}
	for _, pid := range pids {
		for _, h := range byPID[pid] {
			if h.RuntimeRoot {
				ourRoots[h.Link+" -> "+h.Path] = true
			}
		}
	}
	if a, b := diffSets(ourRoots, nixRoots); len(a)+len(b) > 0 {
		t.Errorf("runtime roots of the holders: only busy %v, only nix-store --gc --print-roots %v", a, b)
	}

	// roots --json and roots why --all --json: the environment root with
	// the variable's name and the user.
	type rootJSON struct {
		Kind, Link, Target, Via, Env, User, Command string
		PID                                         int
	}
	envLink := fmt.Sprintf("/proc/%d/environ", pids["ENV"])
	r := nsRun(false, "--json", "roots")
	var listing struct {
		Roots []rootJSON `json:"roots"`
	}
	if err := json.Unmarshal(resultOf([]byte(r.stdout)), &listing); err != nil || r.code != 0 {
		t.Fatalf("roots --json: exit %d, %v\n%s", r.code, err, r.stderr)
	}
	var envRoot, userRoot *rootJSON
	for i, x := range listing.Roots {
		switch {
		case x.Link == envLink && x.Target == envPath:
			envRoot = &listing.Roots[i]
		case x.Link == fmt.Sprintf("/proc/%d/cwd", pids["USER"]) && x.Target == userPath:
			userRoot = &listing.Roots[i]
		}
	}
	if envRoot == nil || envRoot.Kind != "runtime" || envRoot.Via != "environ" || envRoot.Env != "SK_BUSY_VAR" || envRoot.User != "root" || envRoot.Command != "sleep 60" {
		t.Errorf("roots --json: environment root %+v", envRoot)
	}
	if userRoot == nil || userRoot.User != "sk-roots-busy" || userRoot.Via != "cwd" {
		t.Errorf("roots --json: the user's root %+v", userRoot)
	}
	r = nsRun(false, "--json", "roots", "why", "--all", envPath)
	var why struct {
		Paths []struct {
			Roots []struct {
				Root rootJSON `json:"root"`
			} `json:"roots"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(resultOf([]byte(r.stdout)), &why); err != nil || r.code != 0 || len(why.Paths) != 1 {
		t.Fatalf("roots why --all --json: exit %d, %v\n%s\n%s", r.code, err, tail(r.stdout, 2000), r.stderr)
	}
	found := false
	for _, x := range why.Paths[0].Roots {
		if x.Root.Link == envLink {
			found = x.Root.Env == "SK_BUSY_VAR" && x.Root.User == "root" && x.Root.Via == "environ"
		}
	}
	if !found {
		t.Errorf("roots why --all --json: no environment root with SK_BUSY_VAR for %s:\n%s", envPath, tail(r.stdout, 3000))
	}

	wt := nsRun(false, "roots", "why", "--all", envPath)
	if w := fmt.Sprintf("%s -> %s (runtime, pid %d, user root, via environ, variable SK_BUSY_VAR, command 'sleep 60')", envLink, envPath, pids["ENV"]); wt.code != 0 || !strings.Contains(wt.stdout, w) {
		t.Errorf("roots why --all text lacks %q: exit %d\n%s\n%s", w, wt.code, wt.stdout, wt.stderr)
	}

	// The text names pid, user, command and how.
	text := nsRun(false, "roots", "busy")
	if text.code != 0 {
		t.Fatalf("roots busy: exit %d\n%s", text.code, text.stderr)
	}
	for _, w := range []string{
		envPath + " (valid, a runtime root)\n",
		fmt.Sprintf("  PID %d (root) 'sleep 60': environment variable SK_BUSY_VAR names %s\n", pids["ENV"], envPath),
		fmt.Sprintf("  PID %d (root) 'sleep 60': cwd %s\n", pids["CWD"], cwdPath),
		fmt.Sprintf("  PID %d (root) 'sleep 60': fd 0 %s\n", pids["FD"], fdFile),
		fmt.Sprintf("  PID %d (root) '%s 60': exe %s\n", pids["MAP"], exePath, exePath),
		fmt.Sprintf("  PID %d (root) '%s 60': maps %s\n", pids["MAP"], exePath, exePath),
		fmt.Sprintf("  PID %d (sk-roots-busy) 'sleep 60': cwd %s\n", pids["USER"], userPath),
	} {
		if !strings.Contains(text.stdout, w) {
			t.Errorf("roots busy text lacks %q:\n%s", w, text.stdout)
		}
	}
	if alias := nsRun(false, "--json", "roots", "--busy"); alias.code != 0 || !strings.Contains(alias.stdout, fmt.Sprintf(`"link": "%s"`, envLink)) {
		t.Errorf("roots --busy: exit %d\n%s", alias.code, alias.stderr)
	}

	for _, args := range [][]string{{"roots", "busy", "--no-runtime"}, {"roots", "--busy", "--why", envPath}, {"roots", "--busy", "--size"}} {
		if r := nsRun(false, args...); r.code != 2 || !strings.Contains(r.stderr, "busy") {
			t.Errorf("%v: exit %d, want 2 (usage)\n%s", args, r.code, r.stderr)
		}
	}

	// As the unprivileged user: its own process, and root's counted.
	ub, ubyPID := parseBusy(t, "user", nsRun(true, "--json", "roots", "busy"))
	if hs := ubyPID[pids["USER"]]; len(hs) == 0 || hs[0].Path != userPath || hs[0].Via != "cwd" || hs[0].User != "sk-roots-busy" || !hs[0].RuntimeRoot {
		t.Errorf("as the user: its own process %+v", hs)
	}
	for _, what := range []string{"ENV", "CWD", "FD", "MAP"} {
		if hs := ubyPID[pids[what]]; len(hs) > 0 {
			t.Errorf("as the user: root's %s process is listed: %+v", what, hs)
		}
	}
	// root's holders, the script's shell and its setpriv'd child's parent.
	if ub.Result.Uninspectable < 5 || ub.Result.UninspectableUsers["root"] < 5 || ub.Result.Processes < ub.Result.Uninspectable {
		t.Errorf("as the user: %d processes, %d uninspectable (%v)", ub.Result.Processes, ub.Result.Uninspectable, ub.Result.UninspectableUsers)
	}
	utext := nsRun(true, "roots", "busy")
	if want := "could not be inspected ("; utext.code != 0 || !strings.Contains(utext.stdout, want) || !strings.Contains(utext.stdout, "run as root to see what they hold") {
		t.Errorf("as the user, text: exit %d\n%s\n%s", utext.code, utext.stdout, utext.stderr)
	}

	// The store at its root directory, seen from outside: a process on
	// the host in ROOT/nix/store/..., not the namespace's /nix/store ones.
	host := exec.Command("sleep", "60")
	host.Dir = filepath.Join(ns.Root, hostPath)
	startGroup(t, host)
	for i := 0; i < 500; i++ {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", host.Process.Pid)); l == host.Dir {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	ob, obyPID := parseBusy(t, "--store ROOT", run(t, "--store", ns.Root, "--json", "roots", "busy"))
	if ob.Result.StoreDir != filepath.Join(ns.Root, "nix/store") {
		t.Errorf("--store ROOT: store dir %s", ob.Result.StoreDir)
	}
	// (os/exec sets PWD for a Dir: the environment names it too.)
	if hs := obyPID[host.Process.Pid]; len(hs) == 0 || hs[0].Via != "cwd" || hs[0].Path != hostPath || hs[0].File != host.Dir || !hs[0].Valid || !hs[0].RuntimeRoot {
		t.Errorf("--store ROOT: the host process %+v", hs)
	}
	for what, pid := range pids {
		if hs := obyPID[pid]; len(hs) > 0 {
			t.Errorf("--store ROOT: the namespace's %s process (its /nix/store is not ROOT's from here) is listed: %+v", what, hs)
		}
	}
}

// TestRootsBusyMapsAsNix: a process maps (LD_PRELOAD) a library from a
// store path whose file name has a vertical tab inside ("a\vb") and one
// from another whose name ends in one ("lib\v"). Nix's maps pattern
// (libstdc++'s \s counts \v as space) makes only the second a maps root;
// `roots` lists exactly what real `nix-store --gc --print-roots` lists
// for the process, and `roots busy` marks the same holding alone as a
// runtime root.
func TestRootsBusyMapsAsNix(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 4, Seed: 27, Salt: "roots-busy-maps"})
	lib := "/lib/x86_64-linux-gnu/libdl.so.2"
	if _, err := os.Stat(lib); err != nil {
		t.Skipf("no %s to preload: %v", lib, err)
	}
	out := t.TempDir()
	script := `
set -e
mkdir -p "$OUT/inside" "$OUT/end"
cp "$LIB" "$OUT/inside/a` + "\v" + `b"
cp "$LIB" "$OUT/end/lib` + "\v" + `"
inside=$(nix-store --add "$OUT/inside")
end=$(nix-store --add "$OUT/end")
echo "INSIDE $inside"
echo "END $end"
LD_PRELOAD="$inside/a` + "\v" + `b:$end/lib` + "\v" + `" sleep 60 &
pid=$!
echo "PID $pid"
i=0; until grep -q "$end" /proc/$pid/maps 2>/dev/null || [ $i -gt 100 ]; do sleep 0.05; i=$((i+1)); done
set +e
"$BIN" roots > "$OUT/ours.txt" 2>"$OUT/ours.err"; echo "RC $?"
"$BIN" --json roots busy > "$OUT/busy.json" 2>>"$OUT/ours.err"; echo "BUSYRC $?"
nix-store --gc --print-roots > "$OUT/nix.txt" 2>"$OUT/nix.err"; echo "NIXRC $?"
cp /proc/$pid/maps "$OUT/maps"
kill $pid
`
	cmd := nsScript(ns.Root, script)
	cmd.Env = append(cmd.Env, "BIN="+binary, "OUT="+out, "LIB="+lib)
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, res)
	}
	var inside, end string
	var pid int
	rcs := map[string]int{}
	for _, l := range strings.Split(string(res), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		switch f[0] {
		case "INSIDE":
			inside = f[1]
		case "END":
			end = f[1]
		case "PID":
			pid, _ = strconv.Atoi(f[1])
		default:
			rcs[f[0]], _ = strconv.Atoi(f[1])
		}
	}
	if rcs["RC"] != 0 || rcs["BUSYRC"] != 0 || rcs["NIXRC"] != 0 || pid == 0 || inside == "" || end == "" {
		e, _ := os.ReadFile(filepath.Join(out, "ours.err"))
		ne, _ := os.ReadFile(filepath.Join(out, "nix.err"))
		t.Fatalf("script: %s\nstorekeeper: %s\nnix: %s", res, e, ne)
	}
	maps, _ := os.ReadFile(filepath.Join(out, "maps"))
	if !strings.Contains(string(maps), inside+"/a\vb") || !strings.Contains(string(maps), end+"/lib\v") {
		t.Fatalf("the process does not map both libraries:\n%s", maps)
	}
	mine := func(file string) map[string]bool {
		data, _ := os.ReadFile(filepath.Join(out, file))
		return rootLinesUnder(string(data), fmt.Sprintf("/proc/%d/", pid))
	}
	ours, nix := mine("ours.txt"), mine("nix.txt")
	mapsEnd := fmt.Sprintf("/proc/%d/maps -> %s", pid, end)
	if !nix[mapsEnd] {
		t.Fatalf("nix-store --gc --print-roots lacks %q (harness problem?): %v", mapsEnd, nix)
	}
	if a, b := diffSets(ours, nix); len(a)+len(b) > 0 {
		t.Errorf("the process's runtime roots: only storekeeper %v, only nix-store --gc --print-roots %v", a, b)
	}
	var b busyJSON
	data, _ := os.ReadFile(filepath.Join(out, "busy.json"))
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatalf("roots busy --json: %v\n%s", err, data)
	}
	got := map[string]bool{}
	for _, p := range b.Result.Paths {
		for _, h := range p.Holders {
			if h.PID == pid && h.Via == "maps" {
				got[fmt.Sprintf("%s %q %v", p.Path, h.File, h.RuntimeRoot)] = true
			}
		}
	}
	want := map[string]bool{
		fmt.Sprintf("%s %q %v", inside, inside+"/a\vb", false): true,
		fmt.Sprintf("%s %q %v", end, end+"/lib", true):         true,
	}
	if a, b := diffSets(got, want); len(a)+len(b) > 0 {
		t.Errorf("roots busy's maps holders: unexpected %v, missing %v", a, b)
	}
}

// TestRuntimeRootsFakeProcAsNix: real `nix-store --gc --print-roots` and
// `storekeeper roots` read the same hostile /proc (a fake tree bind
// mounted over /proc in the store's namespace) and list the same runtime
// roots: links to a deleted store path and to a deleted file below one,
// a socket, maps lines with a vertical tab inside a name, at its end and
// between fields, with a space, a deleted mapping, leading whitespace;
// environment variables whose names hold control characters or a store
// path, a match that runs on into "=x", a block without a final NUL;
// kernel files with and without their newline.
func TestRuntimeRootsFakeProcAsNix(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 24, Seed: 28, Salt: "roots-fake-proc"})
	var ps []string
	for _, outs := range ns.Outputs {
		ps = append(ps, outs["out"])
	}
	sort.Strings(ps)
	if len(ps) < 21 {
		t.Fatalf("%d outputs", len(ps))
	}
	P := func(i int) string { return ps[i] }
	proc := filepath.Join(t.TempDir(), "proc")
	mk := func(rel, data string) {
		p := filepath.Join(proc, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ln := func(rel, target string) {
		p := filepath.Join(proc, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	ln("100/exe", P(1)+"/bin/x")
	ln("100/cwd", P(2)+" (deleted)")
	ln("100/fd/3", P(3)+"/x (deleted)")
	ln("100/fd/4", "socket:[1]")
	ln("100/fd/5", P(4))
	ln("100/fd/6", "relative"+P(0))
	mk("100/maps", "7f0-7f1 r--p 0 08:01 1 "+P(5)+"/lib.so\n"+
		"7f0-7f1 r--p 0 08:01 1 "+P(6)+"/a\vb\n"+
		"7f0-7f1 r--p 0 08:01 1 "+P(7)+"/lib\v\n"+
		"7f0-7f1\vr--p 0 08:01 1 "+P(8)+"/lib\n"+
		"7f0-7f1 r--p 0 08:01 1 "+P(9)+"/a b\n"+
		"7f0-7f1 r--p 0 08:01 1 "+P(10)+"/x (deleted)\n"+
		" \t7f0-7f1 r--p 0 08:01 1 \f"+P(11)+"/y \r\n"+
		"7f0-7f1 r--p 0 08:01 "+P(0)+"\n")
	mk("100/environ", "A="+P(12)+"\x00B\x1b[31m\n="+P(13)+"/bin\x00X"+P(14)+" Y=1\x00C="+P(15)+"=x\x00D=:"+P(16))
	mk("100/cmdline", "prog\x00")
	ln("101/cwd", P(17))
	if err := os.MkdirAll(filepath.Join(proc, "101/fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	mk("sys/kernel/modprobe", P(18)+"\n")
	mk("sys/kernel/fbsplash", P(19)+"/bin/x")
	mk("sys/kernel/poweroff_cmd", P(20)+"/x\n")

	out := t.TempDir()
	script := `
mount --bind "$FAKEPROC" /proc || exit 96
"$BIN" roots > "$OUT/ours.txt" 2>"$OUT/ours.err"; echo "RC $?"
nix-store --gc --print-roots > "$OUT/nix.txt" 2>"$OUT/nix.err"; echo "NIXRC $?"
`
	cmd := nsScript(ns.Root, script)
	cmd.Env = append(cmd.Env, "BIN="+binary, "OUT="+out, "FAKEPROC="+proc)
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, res)
	}
	read := func(f string) string { b, _ := os.ReadFile(filepath.Join(out, f)); return string(b) }
	if !strings.Contains(string(res), "RC 0\n") || !strings.Contains(string(res), "NIXRC 0\n") {
		t.Fatalf("%s\nstorekeeper: %s\nnix: %s", res, read("ours.err"), read("nix.err"))
	}
	ours, nix := rootLinesUnder(read("ours.txt"), "/proc/"), rootLinesUnder(read("nix.txt"), "/proc/")
	// The cases the tree is made of are all there (the fake /proc was read).
	for _, w := range []string{"/proc/100/exe -> " + P(1), "/proc/101/cwd -> " + P(17), "/proc/sys/kernel/poweroff_cmd -> " + P(20)} {
		if !nix[w] {
			t.Fatalf("nix-store --gc --print-roots lacks %q (harness problem?):\n%s\n%s", w, read("nix.txt"), read("nix.err"))
		}
	}
	if a, b := diffSets(ours, nix); len(a)+len(b) > 0 {
		t.Errorf("runtime roots from the fake /proc: only storekeeper %q, only nix-store --gc --print-roots %q", a, b)
	}
	t.Logf("%d runtime roots agree", len(nix))
}
