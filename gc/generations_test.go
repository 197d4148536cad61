package gc_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/gc"
	"storekeeper/lock"
)

func TestParseOlderThan(t *testing.T) {
	day := 24 * time.Hour
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"30d", 30 * day, true}, {"0d", 0, true}, {"12h", 12 * time.Hour, true}, {"2w", 14 * day, true},
		{"", 0, false}, {"d", 0, false}, {"30", 0, false}, {"-1d", 0, false}, {"3m", 0, false}, {"1.5d", 0, false},
	} {
		got, err := gc.ParseOlderThan(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseOlderThan(%q) = %v, %v", c.in, got, err)
		}
	}
}

// TestParseOlderThanBounds: ages that do not fit a time.Duration (about
// 292 years) are rejected with an error that says so and gives the limit,
// never wrapped around (213504d used to act as about 25 minutes).
func TestParseOlderThanBounds(t *testing.T) {
	day := 24 * time.Hour
	for _, c := range []struct {
		in   string
		want time.Duration
	}{
		{"106751d", 106751 * day}, {"15250w", 15250 * 7 * day}, {"2562047h", 2562047 * time.Hour},
	} {
		if got, err := gc.ParseOlderThan(c.in); err != nil || got != c.want {
			t.Errorf("ParseOlderThan(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{
		"106752d", "213504d", "15251w", "2562048h", "2147483647d", "9223372036854775807d",
		"9223372036854775808d", "99999999999999999999999d", "-1d", "-106752d", "+-1d", "1e9d", "0x10d",
	} {
		got, err := gc.ParseOlderThan(in)
		if err == nil {
			t.Errorf("ParseOlderThan(%q) = %v, want an error", in, got)
			continue
		}
		if !strings.Contains(err.Error(), in) {
			t.Errorf("ParseOlderThan(%q): error %q does not name the input", in, err)
		}
	}
	for _, in := range []string{"106752d", "9223372036854775808d", "2562048h"} {
		if _, err := gc.ParseOlderThan(in); err == nil || !strings.Contains(err.Error(), "106751d") {
			t.Errorf("ParseOlderThan(%q): error %v does not give the limit 106751d", in, err)
		}
	}
}

// TestDeleteGenerationsDirSwappedForSymlink: a user swaps the directory
// of a profile being collected for a symlink to another directory that
// has links of the same names. The collector goes on in the directory it
// opened (unlinkat relative to its descriptor): the other directory's
// links are untouched.
func TestDeleteGenerationsDirSwappedForSymlink(t *testing.T) {
	now := time.Now()
	profiles := t.TempDir()
	user := filepath.Join(profiles, "per-user", "alice")
	p := profile(t, user, "profile", []time.Duration{2 * time.Hour, time.Hour, 0}, 3, now)
	victim := t.TempDir()
	victimProfile := profile(t, victim, "profile", []time.Duration{2 * time.Hour, time.Hour, 0}, 3, now)
	moved := filepath.Join(profiles, "per-user", "alice-moved")
	gc.SetTestHookBeforeGenerations(func(profile string) {
		if profile != p {
			return
		}
		if err := os.Rename(user, moved); err != nil {
			t.Error(err)
		}
		if err := os.Symlink(victim, user); err != nil {
			t.Error(err)
		}
	})
	defer gc.SetTestHookBeforeGenerations(nil)
	if _, err := gc.DeleteGenerations(context.Background(), profiles, gc.GenerationOptions{DeleteOld: true, Now: now}); err != nil {
		t.Fatal(err)
	}
	if got := generations(t, victimProfile); fmt.Sprint(got) != "[1 2 3]" {
		t.Errorf("generations %v left in the symlink's target, want [1 2 3]", got)
	}
	if got := generations(t, filepath.Join(moved, "profile")); fmt.Sprint(got) != "[3]" {
		t.Errorf("generations %v left in the profile's own directory, want [3]", got)
	}
}

// TestDeleteGenerationsSkipsBadLock: a profile whose lock file is a
// symlink or a non-empty file is skipped with a warning naming the lock
// file, promptly; the other profiles are still collected, and the
// symlink's target is not created.
func TestDeleteGenerationsSkipsBadLock(t *testing.T) {
	now := time.Now()
	ages := []time.Duration{2 * time.Hour, time.Hour, 0}
	profiles := t.TempDir()
	good := profile(t, profiles, "default", ages, 3, now)
	sym := profile(t, filepath.Join(profiles, "per-user", "alice"), "profile", ages, 3, now)
	full := profile(t, filepath.Join(profiles, "per-user", "bob"), "profile", ages, 3, now)
	target := filepath.Join(t.TempDir(), "pwned")
	if err := os.Symlink(target, sym+".lock"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full+".lock", []byte("not a lock\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var warnings []string
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := gc.DeleteGenerations(ctx, profiles, gc.GenerationOptions{DeleteOld: true, Now: now,
			Warn: func(msg string) { warnings = append(warnings, msg) }})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("DeleteGenerations still running after 10s: it spins on a bad lock file")
	}
	if got := generations(t, good); fmt.Sprint(got) != "[3]" {
		t.Errorf("%s: generations %v left, want [3]", good, got)
	}
	for _, q := range []string{sym, full} {
		if got := generations(t, q); fmt.Sprint(got) != "[1 2 3]" {
			t.Errorf("%s: generations %v left, want all three (skipped)", q, got)
		}
		found := false
		for _, w := range warnings {
			found = found || strings.Contains(w, q+".lock")
		}
		if !found {
			t.Errorf("no warning names %s.lock: %q", q, warnings)
		}
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the lock symlink's target was created: %v", err)
	}
	if b, _ := os.ReadFile(full + ".lock"); string(b) != "not a lock\n" {
		t.Errorf("the non-empty lock file now holds %q", b)
	}
}

// profile makes a profile named name in dir with generations numbered
// 1..len(ages), generation i created ages[i-1] before now, the profile
// pointing at generation cur.
func profile(t *testing.T, dir, name string, ages []time.Duration, cur int, now time.Time) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, age := range ages {
		link := filepath.Join(dir, fmt.Sprintf("%s-%d-link", name, i+1))
		if err := os.Symlink(fmt.Sprintf("/nix/store/00000000000000000000000000000%03d-profile", i+1), link); err != nil {
			t.Fatal(err)
		}
		ts := unix.NsecToTimespec(now.Add(-age).UnixNano())
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, link, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, name)
	if err := os.Symlink(fmt.Sprintf("%s-%d-link", name, cur), p); err != nil {
		t.Fatal(err)
	}
	return p
}

// generations lists the generation numbers of a profile left on disk.
func generations(t *testing.T, p string) []int {
	t.Helper()
	var out []int
	ents, err := os.ReadDir(filepath.Dir(p))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		var n int
		if _, err := fmt.Sscanf(e.Name(), filepath.Base(p)+"-%d-link", &n); err == nil {
			out = append(out, n)
		}
	}
	sort.Ints(out)
	return out
}

func TestDeleteGenerations(t *testing.T) {
	day := 24 * time.Hour
	now := time.Now()
	ages := []time.Duration{50 * day, 40 * day, 35 * day, 20 * day, 5 * day, 0}
	for _, c := range []struct {
		name string
		cur  int
		o    gc.GenerationOptions
		want []int
	}{
		// -d: everything but the current generation, even after a rollback.
		{"delete-old", 6, gc.GenerationOptions{DeleteOld: true}, []int{6}},
		{"delete-old-rolled-back", 4, gc.GenerationOptions{DeleteOld: true}, []int{4}},
		// --delete-older-than 30d: generation 3 (35 days) was current 30
		// days ago, so it stays, as in Nix; 1 and 2 go.
		{"older-than", 6, gc.GenerationOptions{OlderThan: 30 * day}, []int{3, 4, 5, 6}},
		// The current generation stays even when it is old.
		{"older-than-current-old", 1, gc.GenerationOptions{OlderThan: 30 * day}, []int{1, 3, 4, 5, 6}},
		{"older-than-nothing-old-enough", 6, gc.GenerationOptions{OlderThan: 60 * day}, []int{1, 2, 3, 4, 5, 6}},
		{"older-than-0d", 6, gc.GenerationOptions{OlderThan: time.Nanosecond}, []int{5, 6}},
		{"dry-run", 6, gc.GenerationOptions{DeleteOld: true, DryRun: true}, []int{1, 2, 3, 4, 5, 6}},
	} {
		t.Run(c.name, func(t *testing.T) {
			profiles := t.TempDir()
			p := profile(t, profiles, "default", ages, c.cur, now)
			// A per-user profile in a subdirectory, treated alike.
			user := profile(t, filepath.Join(profiles, "per-user", "alice"), "profile", ages, c.cur, now)
			c.o.Now = now
			removed, err := gc.DeleteGenerations(context.Background(), profiles, c.o)
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{p, user} {
				if got := generations(t, q); fmt.Sprint(got) != fmt.Sprint(c.want) {
					t.Errorf("%s: generations %v left, want %v", q, got, c.want)
				}
				if _, err := os.Stat(q + ".lock"); err == nil && !c.o.DryRun {
					// Nix deletes the lock file when it unlocks (setDeletion).
					t.Errorf("%s.lock left behind", q)
				}
			}
			want := 2 * (len(ages) - len(c.want))
			if c.o.DryRun {
				want = 2 * (len(ages) - 1) // what -d would remove
			}
			if len(removed) != want {
				t.Errorf("%d generations reported removed, want %d: %v", len(removed), want, removed)
			}
			for _, r := range removed {
				if r.Profile != p && r.Profile != user || r.Link != fmt.Sprintf("%s-%d-link", r.Profile, r.Number) {
					t.Errorf("odd report %+v", r)
				}
			}
		})
	}
}

// TestDeleteGenerationsHonoursProfileLock holds a profile's lock (as
// nix-env does while it switches generations) and checks that no
// generation is removed until it is released.
func TestDeleteGenerationsHonoursProfileLock(t *testing.T) {
	profiles := t.TempDir()
	p := profile(t, profiles, "default", []time.Duration{2 * time.Hour, time.Hour, 0}, 3, time.Now())
	held, err := lock.LockPaths(context.Background(), []string{p}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := gc.DeleteGenerations(ctx, profiles, gc.GenerationOptions{DeleteOld: true}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("with the profile locked: %v, want it to wait until the deadline", err)
	}
	if got := generations(t, p); len(got) != 3 {
		t.Fatalf("generations %v removed while the profile was locked", got)
	}
	done := make(chan error, 1)
	go func() {
		_, err := gc.DeleteGenerations(context.Background(), profiles, gc.GenerationOptions{DeleteOld: true})
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	if got := generations(t, p); len(got) != 3 {
		t.Fatalf("generations %v removed while the profile was locked", got)
	}
	held.Unlock(false)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := generations(t, p); fmt.Sprint(got) != "[3]" {
		t.Errorf("generations %v left, want [3]", got)
	}
}
