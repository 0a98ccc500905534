package maps

import (
	"time"

	"golang.org/x/sys/unix"
)

// The program stamps deadlines with bpf_ktime_get_boot_ns: CLOCK_BOOTTIME,
// which keeps counting while the machine is suspended, so a 30-minute grant
// is over 30 wall-clock minutes later whatever happened in between.

// BootNow is the current CLOCK_BOOTTIME in nanoseconds.
func BootNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic("clock_gettime(CLOCK_BOOTTIME): " + err.Error())
	}
	return uint64(ts.Nano())
}

// BootToTime converts a CLOCK_BOOTTIME stamp to wall-clock time.
func BootToTime(ns uint64) time.Time {
	now, boot := time.Now(), BootNow()
	return now.Add(time.Duration(int64(ns) - int64(boot))).Round(time.Millisecond)
}

// BootAfter is the CLOCK_BOOTTIME stamp d from now.
func BootAfter(d time.Duration) uint64 {
	return uint64(int64(BootNow()) + int64(d))
}

// FlowNow is the flows' clock (CLOCK_MONOTONIC_COARSE, as the program's
// flow_now) in nanoseconds.
func FlowNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		panic("clock_gettime(CLOCK_MONOTONIC_COARSE): " + err.Error())
	}
	return uint64(ts.Nano())
}

// FlowToTime converts a flow-clock stamp to wall-clock time.
func FlowToTime(ns uint64) time.Time {
	now, flow := time.Now(), FlowNow()
	return now.Add(time.Duration(int64(ns) - int64(flow))).Round(time.Millisecond)
}
