package main

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"storekeeper/store"
	"storekeeper/store/fs"
)

// ensureWritableStore makes the store writable for this process only,
// like Nix does on NixOS where /nix/store is a read-only bind mount: if
// the store is on a read-only mount, storekeeper re-executes itself in a
// new private mount namespace (CLONE_NEWNS; Go makes propagation private)
// and the child remounts the store read-write there, seen by no other
// process. The parent forwards signals, waits and exits with the child's
// status; it never returns in that case.
//
// The database and state directories are checked first: if they are on a
// read-only mount, the command cannot run whatever happens to the store,
// and the error names them and the mount to remount (store.ErrReadOnlyFS).
// storekeeper does not make them writable for itself, as Nix does not:
// only /nix/store is read-only by design (NixOS), a read-only /nix is an
// administrator's choice.
func ensureWritableStore(lay store.Layout) error {
	for _, d := range []string{lay.DBDir(), lay.StateDir} {
		if err := fs.CheckWritableDir(d); err != nil {
			return err
		}
	}
	ro, err := fs.IsReadOnlyMount(lay.RealStoreDir)
	if err != nil || !ro {
		return err
	}
	if os.Getenv(fs.PrivateNamespaceEnv) == "1" {
		return fs.RemountWritable(lay.RealStoreDir)
	}
	if os.Geteuid() != 0 {
		return fs.RemountNeedsRoot(lay.RealStoreDir)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), fs.PrivateNamespaceEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	// The terminal sends SIGINT to the whole process group, the child
	// included; SIGTERM aimed at us is passed on.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() {
		for s := range sigs {
			if s == syscall.SIGTERM {
				cmd.Process.Signal(s)
			}
		}
	}()
	err = cmd.Wait()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
		if code < 0 {
			code = exitInterrupted
		}
	} else if err != nil {
		return err
	}
	os.Exit(code)
	return nil
}
