package main

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"storekeeper/report"
)

// printer renders output for humans, for machines (--json) or for cron
// (--quiet). As text, results go to stdout and messages to stderr. With
// --json, stdout gets one object, the envelope (see envelope), written
// once when the command ends: the command's result (JSON), the messages
// (Infof, Warnf, ... and the libraries' report.Printer calls) and the
// error, if any; stderr then gets only the final error line.
//
// It is safe for concurrent use: the libraries report from workers.
type printer struct {
	out, err          io.Writer
	json, quiet, verb bool
	progress          bool // draw progress bars

	log    report.Log // --json: the messages, in order
	result any        // --json: what JSON was given (nil: none)
}

// Infof prints an informational message on stderr unless --quiet.
//
// Infof, Verbosef, Warnf, Errorf and Textln pass every message through
// report.Text: whatever a name from the store holds, no control character
// but the message's own newlines reaches the terminal or the log. Names
// in a message should also be quoted with report.Name (a newline in a
// name would otherwise start a line of its own). With --json the message
// goes to the envelope's messages instead, as it is (JSON escapes).
func (p *printer) Infof(format string, a ...any) {
	if !p.quiet {
		p.message(report.LevelInfo, fmt.Sprintf(format, a...), "")
	}
}

// Verbosef prints only with --verbose.
func (p *printer) Verbosef(format string, a ...any) {
	if p.verb && !p.quiet {
		p.message(report.LevelVerbose, fmt.Sprintf(format, a...), "")
	}
}

// Warnf prints a warning on stderr, even under --quiet.
func (p *printer) Warnf(format string, a ...any) {
	p.message(report.LevelWarning, fmt.Sprintf(format, a...), "")
}

// Errorf prints an error line ("error: ...") on stderr, even under --quiet:
// a problem the command reports and goes on past.
func (p *printer) Errorf(format string, a ...any) {
	p.message(report.LevelError, fmt.Sprintf(format, a...), "")
}

// message prints msg on stderr (warnings and errors with their prefix),
// or with --json records it for the envelope.
func (p *printer) message(lv report.Level, msg, path string) {
	if p.json {
		p.log.Record(report.Message{Level: lv, Text: msg, Path: path})
		return
	}
	switch lv {
	case report.LevelWarning:
		msg = "warning: " + msg
	case report.LevelError:
		msg = "error: " + msg
	}
	fmt.Fprintln(p.err, report.Text(msg))
}

// Textln prints one result line (or several, separated by newlines) on
// stdout, even under --quiet.
func (p *printer) Textln(s string) {
	fmt.Fprintln(p.out, report.Text(s))
}

// JSON sets the command's result: with --json, the envelope's "result".
// Commands call it instead of rendering text when --json is given; the
// envelope is written when the command ends (writeEnvelope), also when it
// fails, so a partial result (an interrupted gc) is kept.
func (p *printer) JSON(v any) error {
	p.result = v
	return nil
}

// jsonVersion is the version of the envelope; it changes when a field of
// the envelope or of a result changes meaning or is removed.
const jsonVersion = 1

// envelope is every command's --json output: one object on stdout.
// Conventions (README, "JSON output"): bytes are integers (…_bytes or
// bytes_…), durations float seconds (…_seconds), counts of store paths
// paths_…, names as they are (not quoted as in text).
type envelope struct {
	Command string `json:"command"`         // the subcommand: gc, verify, optimise, roots, info ("" if none was found)
	Version int    `json:"version"`         // jsonVersion
	Store   string `json:"store,omitempty"` // the logical store directory, once known
	OK      bool   `json:"ok"`              // exit status 0
	// Error is why the exit status is not 0.
	Error *jsonError `json:"error,omitempty"`
	// DurationSeconds is the whole command's wall time.
	DurationSeconds float64          `json:"duration_seconds"`
	Messages        []report.Message `json:"messages"`
	// Result is the command's own output (null when it failed before
	// having one).
	Result any `json:"result"`
}

// jsonError is the envelope's error: its kind (errorTable), the message
// the text output prints after "storekeeper: ", and what to do about it.
type jsonError struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

// writeEnvelope writes the envelope of a command that ended with outcome.
func (p *printer) writeEnvelope(command, storeDir string, o outcome, elapsed time.Duration) error {
	e := envelope{
		Command: command, Version: jsonVersion, Store: storeDir, OK: o.code == exitOK,
		DurationSeconds: elapsed.Seconds(), Messages: p.log.Messages(), Result: p.result,
	}
	if o.code != exitOK {
		e.Error = &jsonError{Kind: o.kind, Message: o.message, Hint: o.hint}
	}
	enc := json.NewEncoder(p.out)
	enc.SetIndent("", "  ")
	return enc.Encode(e)
}
