package main

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// clockSync is what the kernel knows of the system clock's accuracy
// (adjtimex, as ntptime and timedatectl read it), for an error message;
// "" when it cannot say.
func clockSync() string {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		return ""
	}
	if state == unix.TIME_ERROR || tx.Status&unix.STA_UNSYNC != 0 {
		return "the system says it is not synchronized with any time server, so it may be off by any amount"
	}
	return fmt.Sprintf("synchronized with a time server, to within %s by the system's estimate", time.Duration(tx.Maxerror)*time.Microsecond)
}
