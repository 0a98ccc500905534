package main

import (
	"errors"
	"syscall"
)

// Winsock's error numbers, which Go reports as they are.
const (
	wsaeconnrefused = syscall.Errno(10061)
	wsaenetunreach  = syscall.Errno(10051)
	wsaehostunreach = syscall.Errno(10065)
)

func isUnreachable(err error) bool {
	return errors.Is(err, wsaenetunreach) || errors.Is(err, wsaehostunreach)
}

func isRefused(err error) bool {
	return errors.Is(err, wsaeconnrefused) || errors.Is(err, syscall.ECONNREFUSED)
}
