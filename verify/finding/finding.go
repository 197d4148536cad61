// Package finding holds the problems an audit reports as typed data: what
// is wrong (a Kind), where (the path, the file), what was expected and
// found, a message in Nix's words, and what fixes it (a Remedy: an action
// and the paths it acts on, not a command line). verify makes findings;
// repair executes the remedies it can do on the machine; the CLI renders
// both. It is a package of its own so that repair (and later forensics)
// use the findings without importing verify's audit, and so that the
// import-direction test can say exactly that.
//
// Findings are plain values: nothing here does I/O or holds a lock.
package finding

import (
	"encoding/json"
	"sort"
	"strings"

	"storekeeper/nix/nar"
	"storekeeper/report"
	"storekeeper/store/fs"
)

// Kind says what a finding is about. Its text is the JSON "kind" field.
// Every kind makes the audit's caller exit with status 1 unless the
// finding was repaired.
type Kind string

// The kinds verify reports.
const (
	KindDisappeared           Kind = "disappeared"            // missing from disk; nothing that exists refers to it (repair drops its row, like Nix)
	KindDisappearedReferenced Kind = "disappeared-referenced" // missing from disk, still referenced by paths that exist
	KindModified              Kind = "modified"               // NAR hash differs from the DB's
	KindFileChanged           Kind = "file-changed"           // a file of a modified path differs from the manifest
	KindFileAdded             Kind = "file-added"             // a file that the manifest does not list
	KindFileRemoved           Kind = "file-removed"           // a file that the manifest lists is gone
	KindNarSize               Kind = "nar-size"               // contents match the hash, but the DB's narSize is wrong
	KindMissingHash           Kind = "missing-hash"           // the DB holds no (or an all-zero) hash
	KindMissingNarSize        Kind = "missing-nar-size"       // the DB's narSize is 0 (old stores)
	KindIOError               Kind = "io-error"               // the path (or a .links entry) could not be read
	KindLinkModified          Kind = "link-modified"          // a .links entry's contents do not match its name
	KindDanglingRefs          Kind = "dangling-refs"          // Refs rows naming ids not in ValidPaths
	KindDanglingDrvOutputs    Kind = "dangling-drv-outputs"   // DerivationOutputs rows of unregistered derivations
	KindOutputsOfNonDrv       Kind = "outputs-of-non-derivation"
	KindNameClash             Kind = "name-clash"       // an unregistered entry has a valid path's hash part
	KindUntrusted             Kind = "untrusted"        // fewer valid signatures than needed
	KindBadMode               Kind = fs.MetaBadMode     // mode other than 0444/0555 (directories 0555)
	KindSetuid                Kind = fs.MetaSetuid      // setuid or setgid bit
	KindWritable              Kind = fs.MetaWritable    // a write permission bit
	KindBadMtime              Kind = "bad-mtime"        // mtime other than 1
	KindBadOwner              Kind = fs.MetaBadOwner    // not owned by the store directory's owner
	KindForeignLink           Kind = fs.MetaForeignLink // hard links outside the store's valid paths and .links
)

// rank orders the findings of one path: the worst first.
var rank = map[Kind]int{
	KindDisappearedReferenced: 0, KindDisappeared: 1, KindIOError: 2, KindModified: 3,
	KindFileChanged: 4, KindFileAdded: 4, KindFileRemoved: 4, KindNarSize: 5,
	KindMissingHash: 6, KindMissingNarSize: 7, KindUntrusted: 8, KindSetuid: 9,
	KindWritable: 10, KindBadMode: 11, KindBadMtime: 12, KindBadOwner: 13, KindForeignLink: 14,
	KindLinkModified: 15, KindNameClash: 16, KindOutputsOfNonDrv: 17, KindDanglingRefs: 18,
	KindDanglingDrvOutputs: 19,
}

// Action is what a remedy does. Its text is the JSON "action" field.
type Action string

// The remedies. RemedyInvalidate, RemedyRecordNarInfo,
// RemedyDeleteDanglingRows and RemedyRemoveLinksEntry are done on the
// machine (package repair); the others need a substitute, a key or a
// person.
const (
	// RemedyInvalidate drops the rows of Paths, missing from disk with nothing
	// existing referring to them (as nix-store --verify does).
	RemedyInvalidate Action = "invalidate"
	// RemedyRecordNarInfo writes NarHash and NarSize, what the contents of
	// Paths[0] hash to, into its row.
	RemedyRecordNarInfo Action = "record-nar-info"
	// RemedyDeleteDanglingRows deletes the Refs and DerivationOutputs rows that
	// name no valid path.
	RemedyDeleteDanglingRows Action = "delete-dangling-rows"
	// RemedyRemoveLinksEntry removes the damaged .links entries Paths (their
	// logical paths, <store>/.links/<name>).
	RemedyRemoveLinksEntry Action = "remove-links-entry"
	// RemedyRelink hard-links intact copies again (optimise), after their
	// .links entry was removed.
	RemedyRelink Action = "relink"
	// RemedyRepairPath puts Paths back from a substitute.
	RemedyRepairPath Action = "repair-path"
	// RemedyCheckDiskThenRepairPath: Paths could not be read; check the disk,
	// then put them back from a substitute.
	RemedyCheckDiskThenRepairPath Action = "check-disk-then-repair-path"
	// RemedySign adds signatures by a trusted key to Paths.
	RemedySign Action = "sign"
	// RemedyInspectAndRemove: Paths (on disk, not logical) are unregistered
	// entries that a person should look at and remove.
	RemedyInspectAndRemove Action = "inspect-and-remove"
)

// Remedy is what fixes a finding: an action and what it acts on.
type Remedy struct {
	Action Action
	Paths  []string
	// IDs are the ValidPaths ids of Paths when the audit read them
	// (parallel to Paths; missing or 0: not known), so that a remedy
	// acts only on the registration the finding is about, never on one
	// made since. They are not part of the JSON form.
	IDs []int64
	// NarHash and NarSize: what RemedyRecordNarInfo records.
	NarHash nar.Hash
	NarSize uint64
}

// ID is the ValidPaths id of Paths[i] when the audit read it, or 0.
func (r *Remedy) ID(i int) int64 {
	if i < len(r.IDs) {
		return r.IDs[i]
	}
	return 0
}

// Command is the remedy as the command line a person runs (the JSON "fix"
// field), or "" for no remedy.
func (r *Remedy) Command() string {
	if r == nil {
		return ""
	}
	ps := strings.Join(r.Paths, " ")
	switch r.Action {
	case RemedyInvalidate:
		return "storekeeper verify --repair " + ps
	case RemedyRecordNarInfo:
		return "storekeeper verify --check-contents --repair " + ps
	case RemedyDeleteDanglingRows:
		return "storekeeper verify --repair"
	case RemedyRemoveLinksEntry:
		return "storekeeper verify --check-contents --repair"
	case RemedyRelink:
		return "storekeeper optimise (or nix-store --optimise) to relink intact copies"
	case RemedyRepairPath:
		return "nix-store --repair-path " + ps
	case RemedyCheckDiskThenRepairPath:
		return "check the disk, then: nix-store --repair-path " + ps
	case RemedySign:
		return "nix store sign --key-file KEYFILE " + ps
	case RemedyInspectAndRemove:
		q := make([]string, len(r.Paths))
		for i, p := range r.Paths {
			q[i] = report.ShellArg(p)
		}
		return "inspect it, then remove it: rm -rf " + strings.Join(q, " ")
	}
	return string(r.Action) + " " + ps
}

// remedyJSON is a Remedy on the wire.
type remedyJSON struct {
	Action  Action   `json:"action"`
	Paths   []string `json:"paths,omitempty"`
	NarHash string   `json:"nar_hash,omitempty"`
	NarSize uint64   `json:"nar_size,omitempty"`
}

// MarshalJSON writes the remedy as {"action", "paths", and for
// RemedyRecordNarInfo "nar_hash" (sha256:<base-32>) and "nar_size"}.
func (r Remedy) MarshalJSON() ([]byte, error) {
	w := remedyJSON{Action: r.Action, Paths: r.Paths}
	if r.Action == RemedyRecordNarInfo {
		w.NarHash, w.NarSize = r.NarHash.String(), r.NarSize
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *Remedy) UnmarshalJSON(b []byte) error {
	var w remedyJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*r = Remedy{Action: w.Action, Paths: w.Paths, NarSize: w.NarSize}
	if w.NarHash != "" {
		h, err := nar.ParseHash(w.NarHash)
		if err != nil {
			return err
		}
		r.NarHash = h
	}
	return nil
}

// Finding is one problem.
type Finding struct {
	Kind     Kind
	Path     string // the store path concerned (logical)
	File     string // a file relative to Path, or a .links entry's path
	Expected string
	Got      string
	Message  string  // for humans, in Nix's words where Nix has them
	Remedy   *Remedy // what fixes it; nil: nothing known does
	Repaired bool
}

// findingJSON is a Finding on the wire: the fields in this order, "fix"
// the remedy's command line.
type findingJSON struct {
	Kind     Kind    `json:"kind"`
	Path     string  `json:"path,omitempty"`
	File     string  `json:"file,omitempty"`
	Expected string  `json:"expected,omitempty"`
	Got      string  `json:"got,omitempty"`
	Message  string  `json:"message"`
	Fix      string  `json:"fix,omitempty"` // the command that fixes it: Remedy.Command
	Remedy   *Remedy `json:"remedy,omitempty"`
	Repaired bool    `json:"repaired,omitempty"`
}

// MarshalJSON writes the finding with its remedy twice: as the command
// line ("fix") and as data ("remedy").
func (f Finding) MarshalJSON() ([]byte, error) {
	return json.Marshal(findingJSON{f.Kind, f.Path, f.File, f.Expected, f.Got, f.Message, f.Remedy.Command(), f.Remedy, f.Repaired})
}

// UnmarshalJSON reads what MarshalJSON writes ("fix" is derived from the
// remedy, so it is not read).
func (f *Finding) UnmarshalJSON(b []byte) error {
	var w findingJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*f = Finding{Kind: w.Kind, Path: w.Path, File: w.File, Expected: w.Expected, Got: w.Got, Message: w.Message, Remedy: w.Remedy, Repaired: w.Repaired}
	return nil
}

// NewRemedy is a remedy of action for the given paths.
func NewRemedy(action Action, paths ...string) *Remedy {
	return &Remedy{Action: action, Paths: paths}
}

// Sort puts findings in their report order: by path, then kind (the
// worst first), then file. It is stable.
func Sort(fs []Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		a, b := &fs[i], &fs[j]
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		if rank[a.Kind] != rank[b.Kind] {
			return rank[a.Kind] < rank[b.Kind]
		}
		return a.File < b.File
	})
}
