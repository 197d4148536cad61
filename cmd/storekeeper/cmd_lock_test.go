package main

import (
	"strings"
	"testing"

	"storekeeper/lock"
)

// TestLockStatusTextEscaped: file names and command lines come from other
// users (a lock file's name, a process's argv): control characters are
// escaped in the text, so neither can forge a line or drive a terminal.
func TestLockStatusTextEscaped(t *testing.T) {
	var b strings.Builder
	held := lock.LockFileStatus{Path: "/nix/store/x\nstale.lock", Exists: true,
		Holders: []lock.LockUser{{PID: 7, Command: "evil\x1b[2J\nheld by PID 1", Kind: "flock", Mode: "exclusive"}}}
	fileList(&b, "path locks", []lock.LockFileStatus{held}, 1, 0, 0)
	lockLine(&b, "gc.lock", lock.LockFileStatus{Path: "/nix/var/nix/gc\x1b.lock", Exists: true, Holders: held.Holders})
	out := b.String()
	if strings.ContainsRune(out, '\x1b') {
		t.Errorf("raw escape in the text:\n%q", out)
	}
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "stale") || strings.HasPrefix(strings.TrimSpace(line), "held by PID 1") {
			t.Errorf("a name forged a line: %q in\n%s", line, out)
		}
	}
}

// TestLockPruneText: a line per file saying what was done and why, with
// the holder of a held file, names and details escaped (a file name
// cannot forge a line), and the totals.
func TestLockPruneText(t *testing.T) {
	r := &lock.PruneReport{Files: []lock.PruneFile{
		{Path: "/nix/var/nix/temproots/12", Kind: lock.KindTempRoots, Action: lock.PruneRemoved},
		{Path: "/nix/store/x\nremoved /etc/passwd.lock", Kind: lock.KindPathLock, Action: lock.PruneKept, Reason: lock.PruneHeld,
			Holders: []lock.LockUser{{PID: 7, Command: "nix-build\x1b[2J", Kind: "flock", Mode: "exclusive"}}},
		{Path: "/nix/store/y.lock", Kind: lock.KindPathLock, Action: lock.PruneFailed, Reason: lock.PrunePermission, Detail: "not ours\nremoved"},
	}, Removed: 1, TempRootsRemoved: 1, Kept: 1, Held: 1, Failed: 1}
	out := pruneText(r)
	for _, want := range []string{
		"removed /nix/var/nix/temproots/12 (stale temp-roots file, nobody held it)\n",
		"kept /nix/store/x\\nremoved /etc/passwd.lock: held by PID 7 'nix-build\\x1b[2J' (exclusive flock)\n",
		"could not remove /nix/store/y.lock: permission (not ours\\nremoved)\n",
		"removed 1 stale file(s) (1 temp-roots, 0 path locks); kept 1 (1 held); 1 could not be removed\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "\n") != 4 || strings.ContainsRune(out, '\x1b') {
		t.Errorf("a name forged a line or kept an escape:\n%q", out)
	}
	r.DryRun = true
	r.Files = []lock.PruneFile{{Path: "/nix/store/z.lock", Kind: lock.KindPathLock, Action: lock.PruneWouldRemove}}
	if out := pruneText(r); !strings.HasPrefix(out, "would remove /nix/store/z.lock (stale path lock, nobody holds it)\nwould remove 1 stale file(s)") {
		t.Errorf("dry run text:\n%s", out)
	}
}

// TestLockStatusGCSocketText: the gc socket is never connected to, so the
// text says whether a process listens on it, not that it "accepts
// connections"; the reason it is not served is escaped.
func TestLockStatusGCSocketText(t *testing.T) {
	for _, c := range []struct {
		r    lock.StatusReport
		want string
	}{
		{lock.StatusReport{GCSocket: "/s", GCSocketExists: true, GCSocketAccepts: true}, "gc socket: /s is served (a process listens on it)\n"},
		{lock.StatusReport{GCSocket: "/s", GCSocketExists: true, GCSocketError: "no process listens on it\x1b"}, "gc socket: /s is not served (no process listens on it\\x1b)\n"},
		{lock.StatusReport{GCSocket: "/s"}, "gc socket: /s does not exist\n"},
	} {
		var b strings.Builder
		gcSocketLine(&b, &c.r)
		if b.String() != c.want {
			t.Errorf("%+v: %q, want %q", c.r, b.String(), c.want)
		}
	}
}
