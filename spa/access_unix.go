//go:build unix

package spa

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// checkOwnerOnly refuses a key file that group or others may read, one that
// belongs to another user than the one reading it (its owner could change
// the key under them; root's files are trusted, as OpenSSH trusts them),
// and for RootOnly one that root does not own.
func checkOwnerOnly(_ *os.File, st fs.FileInfo, path string, access Access) error {
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("key file %s is open to group or others (mode %04o): its keys would open the gate to them; chmod 600 it", path, perm)
	}
	uid, ok := ownerUID(st)
	if !ok {
		return nil
	}
	switch me := uint32(os.Geteuid()); {
	case access == RootOnly && uid != 0:
		return fmt.Errorf("key file %s is owned by uid %d, not root: that user can read its keys; chown root it", path, uid)
	case access == OwnerOnly && uid != me && uid != 0:
		return fmt.Errorf("key file %s is not yours: it belongs to uid %d and you are uid %d, so its owner can read or change your key; "+
			"copy it to a file of your own and chmod 600 that", path, uid, me)
	}
	return nil
}

func ownerUID(st fs.FileInfo) (uint32, bool) {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Uid, true
	}
	return 0, false
}
