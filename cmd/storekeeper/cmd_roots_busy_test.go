package main

import (
	"strings"
	"testing"

	"storekeeper/roots"
)

// TestRootsBusyText: grouped by path with its state, a line per holder
// naming pid, user, command and how it holds the path; command lines,
// user and variable names and file names come from other users' processes:
// control characters are escaped, so none can forge a line or drive a
// terminal; the unreadable processes are counted by user.
func TestRootsBusyText(t *testing.T) {
	r := &roots.BusyReport{StoreDir: "/nix/store", Processes: 9, Holding: 2, Uninspectable: 3,
		UninspectableUsers: map[string]int{"root": 2, "eve\x1b[2J": 1},
		Paths: []roots.BusyPath{
			{Path: "/nix/store/aaa-x", Valid: true, RuntimeRoot: true, Holders: []roots.BusyHolder{
				{PID: 7, User: "alice", Command: "sleep 60", Via: "exe", Link: "/proc/7/exe", File: "/nix/store/aaa-x/bin/sleep", RuntimeRoot: true},
				{PID: 7, User: "alice", Command: "sleep 60", Via: "fd", Link: "/proc/7/fd/0", File: "/nix/store/aaa-x/f\nPID 1 (root) 'x': exe y", RuntimeRoot: true},
				{PID: 8, User: "", Command: "evil\x1b]0;t\x07\nPID 1", Via: "environ", Link: "/proc/8/environ", File: "/nix/store/aaa-x", Env: "SUDO\x1b_COMMAND", RuntimeRoot: true},
			}},
			{Path: "/nix/store/bbb-y", Valid: true, Holders: []roots.BusyHolder{
				{PID: 8, User: "bob", Command: "chroot", Via: "root", Link: "/proc/8/root", File: "/nix/store/bbb-y"},
			}},
			{Path: "/nix/store/.links", Holders: []roots.BusyHolder{
				{PID: 8, User: "bob", Command: "x", Via: "maps", Link: "/proc/8/maps", File: "/nix/store/.links/0a"},
			}},
		}}
	out := busyText(r, false)
	for _, want := range []string{
		"/nix/store/aaa-x (valid, a runtime root)\n",
		"  PID 7 (alice) 'sleep 60': exe /nix/store/aaa-x/bin/sleep\n",
		"  PID 7 (alice) 'sleep 60': fd 0 /nix/store/aaa-x/f\\nPID 1 (root) 'x': exe y\n",
		"  PID 8 (unknown user) 'evil\\x1b]0;t\\x07\\nPID 1': environment variable SUDO\\x1b_COMMAND names /nix/store/aaa-x\n",
		"/nix/store/bbb-y (valid, not a runtime root)\n  PID 8 (bob) 'chroot': root /nix/store/bbb-y (not a runtime root)\n",
		"/nix/store/.links (not valid)\n  PID 8 (bob) 'x': maps /nix/store/.links/0a\n",
		"3 store paths in /nix/store held by 2 of the 9 processes looked at\n",
		"3 processes could not be inspected (eve\\x1b[2J: 1, root: 2): run as root to see what they hold\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "\n") != 10 || strings.ContainsAny(out, "\x1b\x07") {
		t.Errorf("a name forged a line or kept a control character:\n%q", out)
	}
	empty := busyText(&roots.BusyReport{StoreDir: "/mnt/nix/store", Processes: 4, Uninspectable: 1, UninspectableUsers: map[string]int{"?": 1}}, true)
	if empty != "nothing in /mnt/nix/store is held by the 4 processes looked at\n1 process could not be inspected (?: 1): not dumpable, or in another user namespace\n" {
		t.Errorf("empty report:\n%s", empty)
	}
}
