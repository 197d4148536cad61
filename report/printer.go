package report

import "sync"

// Printer receives the messages for people that a library has while it
// works: information (a wait, why a run stopped), warnings (a problem that
// did not stop it, optionally about one path) and detail shown only on
// request. It is the one channel of such messages: libraries never print,
// and keep in their results only what is data (findings, counts, the
// notices of optimise), not what is said to a person.
//
// The command line implements it once (cmd/storekeeper): as text on
// stderr, each message passed through Text (warnings prefixed "warning: ",
// shown even under --quiet; Info and Verbose not under --quiet, Verbose
// only with --verbose), or with --json collected into the envelope's
// "messages" as Message values (see Message).
//
// Messages are plain text: names in them should be quoted with Name, so
// that a newline in a name cannot forge a line; JSON carries the path of
// a warning as it is, in Message.Path. Implementations must be safe for
// concurrent use: workers report from several goroutines at once.
type Printer interface {
	// Info is a message printed unless the user asked for quiet.
	Info(msg string)
	// Warn is a problem that did not stop the work; path is the file or
	// store path concerned ("" for none).
	Warn(msg, path string)
	// Verbose is detail printed only with --verbose.
	Verbose(msg string)
}

// Level is how important a Message is.
type Level string

// The levels of a Message, in JSON as they are.
const (
	LevelError   Level = "error"   // a problem the command reports and goes on past (the run's own failure is the envelope's "error")
	LevelWarning Level = "warning" // Printer.Warn
	LevelInfo    Level = "info"    // Printer.Info
	LevelVerbose Level = "verbose" // Printer.Verbose
)

// Message is one message for people as the JSON envelope carries it.
type Message struct {
	Level Level  `json:"level"`
	Text  string `json:"text"`
	Path  string `json:"path,omitempty"`
}

// Log is a Progress that keeps every message in order and ignores phases
// and counts: what --json collects into its envelope, and what tests read
// back. The zero value is ready to use; it is safe for concurrent use.
type Log struct {
	mu   sync.Mutex
	msgs []Message
}

var _ Progress = (*Log)(nil)

// Record records a message.
func (l *Log) Record(m Message) {
	l.mu.Lock()
	l.msgs = append(l.msgs, m)
	l.mu.Unlock()
}

// Messages returns a copy of the messages recorded so far, never nil.
func (l *Log) Messages() []Message {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Message{}, l.msgs...)
}

// Texts returns the texts of the messages of level lv recorded so far.
func (l *Log) Texts(lv Level) []string {
	var out []string
	for _, m := range l.Messages() {
		if m.Level == lv {
			out = append(out, m.Text)
		}
	}
	return out
}

func (l *Log) Info(msg string)           { l.Record(Message{Level: LevelInfo, Text: msg}) }
func (l *Log) Warn(msg, path string)     { l.Record(Message{Level: LevelWarning, Text: msg, Path: path}) }
func (l *Log) Verbose(msg string)        { l.Record(Message{Level: LevelVerbose, Text: msg}) }
func (l *Log) Phase(string, int64, bool) {}
func (l *Log) Add(int64)                 {}
