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
