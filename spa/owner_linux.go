package spa

import (
	"io/fs"
	"syscall"
)

func ownerUID(st fs.FileInfo) (uint32, bool) {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Uid, true
	}
	return 0, false
}
