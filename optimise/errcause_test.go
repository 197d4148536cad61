package optimise

import (
	"context"
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"storekeeper/nix/storepath"
	"storekeeper/store"
	"storekeeper/store/storetest"
)

// TestErrorsKeepTheirCause: optimise's refusals wrap both their sentinel
// and the error behind them, visible to errors.Is, with the message
// unchanged: why a path given is not a store path, and why .links cannot
// be created, opened or read (an errno a caller can tell apart: EPERM,
// ENOTDIR, and the same way EROFS, ENOSPC or EACCES).
func TestErrorsKeepTheirCause(t *testing.T) {
	cases := []struct {
		name           string
		prepare        func(t *testing.T, lay store.Layout)
		run            func(s *store.Store) error
		sentinel, want error
	}{
		{"a path outside the store", nil, func(s *store.Store) error {
			_, err := Optimise(context.Background(), s, Options{Paths: []string{"/etc/passwd"}}, nil)
			return err
		}, ErrNotValid, storepath.ErrBadStorePath},
		{".links a file", func(t *testing.T, lay store.Layout) {
			if err := os.WriteFile(lay.LinksDir(), nil, 0o444); err != nil {
				t.Fatal(err)
			}
		}, func(s *store.Store) error {
			_, err := Optimise(context.Background(), s, Options{}, nil)
			return err
		}, ErrLinksDir, unix.ENOTDIR},
		{".links a file, savings", func(t *testing.T, lay store.Layout) {
			if err := os.WriteFile(lay.LinksDir(), nil, 0o444); err != nil {
				t.Fatal(err)
			}
		}, func(s *store.Store) error {
			_, err := Savings(s.Layout)
			return err
		}, ErrLinksDir, unix.ENOTDIR},
		{".links cannot be created", func(t *testing.T, lay store.Layout) {
			// An immutable store directory: even root gets EPERM.
			setImmutable(t, lay.RealStoreDir)
		}, func(s *store.Store) error {
			_, err := Optimise(context.Background(), s, Options{}, nil)
			return err
		}, ErrLinksDir, unix.EPERM},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := storetest.Build(t.TempDir(), storetest.Spec{Paths: 4, Seed: 2, MaxDeps: 1, Files: 2, FileSize: 64, Dup: 0.5})
			if err != nil {
				t.Fatal(err)
			}
			os.Remove(b.Layout.LinksDir())
			if tc.prepare != nil {
				tc.prepare(t, b.Layout)
			}
			err = tc.run(storetest.Open(t, b.Layout))
			if err == nil {
				t.Fatal("no error")
			}
			t.Log(err)
			if !errors.Is(err, tc.sentinel) {
				t.Errorf("errors.Is(err, %v) is false", tc.sentinel)
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("errors.Is(err, %v) is false: the cause is only in the text", tc.want)
			}
		})
	}
}

// fsImmutableFL is FS_IMMUTABLE_FL of <linux/fs.h> (chattr +i).
const fsImmutableFL = 0x10

// setImmutable sets the immutable attribute on dir until the test ends,
// or skips the test where the file system does not support it.
func setImmutable(t *testing.T, dir string) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err == nil {
		err = unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags|fsImmutableFL))
	}
	if err != nil {
		t.Skipf("cannot make %s immutable here: %v", dir, err)
	}
	t.Cleanup(func() {
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err == nil {
			err = unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags))
			unix.Close(fd)
		}
		if err != nil {
			t.Errorf("restoring the flags of %s: %v", dir, err)
		}
	})
}
