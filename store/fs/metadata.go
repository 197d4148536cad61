package fs

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Metadata problems: how a store node's owner, mode or link count differ
// from what Nix's canonicalisation leaves (Canonical: owner the store
// directory's owner; mode 0444, or 0555 for directories and executables,
// with no setuid, setgid or sticky bit; names only in store paths and
// .links).
// `verify --metadata` reports them and `optimise` refuses to link a file
// that has one; the kinds and the words are the same for both.
const (
	MetaBadOwner    = "bad-owner"    // not owned by the store directory's owner
	MetaSetuid      = "setuid"       // setuid or setgid bit
	MetaWritable    = "writable"     // a write permission bit
	MetaBadMode     = "bad-mode"     // mode other than 0444/0555
	MetaForeignLink = "foreign-link" // hard links outside the store's paths and .links
)

// MetaProblem is one metadata problem of a node.
type MetaProblem struct {
	Kind     string `json:"kind"`
	Expected string `json:"expected"`
	Got      string `json:"got"`
	Message  string `json:"message"` // names the node as the caller gave it
}

// OwnerModeProblems appends to out the owner and mode problems of the node
// whose lstat is st, in a store whose directory storeUID owns: a foreign
// owner, then at most one of setuid/setgid, a write bit, another mode (a
// symlink has no mode problem). full names the node in the messages; the
// caller makes it safe to print (report.Name). It makes no system call.
func OwnerModeProblems(out []MetaProblem, full string, st *unix.Stat_t, storeUID uint32) []MetaProblem {
	if st.Uid != storeUID {
		out = append(out, MetaProblem{MetaBadOwner, fmt.Sprint(storeUID), fmt.Sprint(st.Uid),
			fmt.Sprintf("'%s' is owned by uid %d, not by the store's owner (uid %d)", full, st.Uid, storeUID)})
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return out
	}
	perm, want := st.Mode&0o7777, Nix.Want(st.Mode)
	switch {
	case perm&(unix.S_ISUID|unix.S_ISGID) != 0:
		out = append(out, MetaProblem{MetaSetuid, fmt.Sprintf("%04o", want), fmt.Sprintf("%04o", perm),
			fmt.Sprintf("'%s' has the setuid or setgid bit (mode %04o)", full, perm)})
	case perm&0o222 != 0:
		out = append(out, MetaProblem{MetaWritable, fmt.Sprintf("%04o", want), fmt.Sprintf("%04o", perm),
			fmt.Sprintf("'%s' is writable (mode %04o)", full, perm)})
	case perm != want:
		out = append(out, MetaProblem{MetaBadMode, fmt.Sprintf("%04o", want), fmt.Sprintf("%04o", perm),
			fmt.Sprintf("'%s' has mode %04o, not %04o", full, perm, want)})
	}
	return out
}

// ForeignLinkProblem is the problem of a node named full with nlink hard
// links of which only seen are known names in the store's paths and
// .links.
func ForeignLinkProblem(full string, nlink, seen uint64) MetaProblem {
	return MetaProblem{MetaForeignLink, fmt.Sprint(seen), fmt.Sprint(nlink),
		fmt.Sprintf("'%s' has %d hard links, but only %d are in the store's paths and .links: %d are elsewhere", full, nlink, seen, nlink-seen)}
}
