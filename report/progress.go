package report

// Progress receives what a long-running library call (gc.Collect,
// verify.Verify, optimise.Optimise) reports while it works: counts for a
// progress bar, one phase at a time, and messages for people (it is a
// Printer). It is the one progress interface of storekeeper; each library
// passes it through unchanged, and the command line implements it once
// (cmd/storekeeper's progress.go).
//
// Implementations must be safe for concurrent use: workers call Add from
// several goroutines at once, also while another goroutine calls Info.
// Phase is called by one goroutine at a time; an Add racing with it may
// count toward either phase. Add is called in hot loops (once per file or
// per path): it must not block on I/O and should not allocate. Messages
// are rare; a Printer may take a lock.
//
// A nil Progress passed to a library means Discard. The libraries call
// its methods only while they run, never after they return.
//
// Events that only one library has (a path about to be deleted, a path
// whose contents were verified, a file hashed) are not part of Progress:
// each library declares a small optional interface for them, which a
// Progress may also implement, checked once with a type assertion.
type Progress interface {
	Printer
	// Phase starts a phase of work: name is what a person reads next to
	// the bar ("checking contents"), total its amount of work in bytes
	// (bytes true) or items, or -1 when unknown. It ends the phase before.
	Phase(name string, total int64, bytes bool)
	// Add reports n more units of the current phase done.
	Add(n int64)
}

// Discard is a Progress that ignores everything. Its methods do nothing
// and allocate nothing.
var Discard Progress = discard{}

type discard struct{}

func (discard) Phase(string, int64, bool) {}
func (discard) Add(int64)                 {}
func (discard) Info(string)               {}
func (discard) Warn(string, string)       {}
func (discard) Verbose(string)            {}
