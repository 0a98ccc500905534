//go:build !unix && !windows

package spa

import (
	"fmt"
	"io/fs"
	"os"
)

// checkOwnerOnly has only the mode bits to go by on systems that are
// neither Unix nor Windows (no knockgate target is one).
func checkOwnerOnly(_ *os.File, st fs.FileInfo, path string, _ Access) error {
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("key file %s is open to group or others (mode %04o): chmod 600 it", path, perm)
	}
	return nil
}
