//go:build !windows

package main

import (
	"errors"
	"syscall"
)

func isUnreachable(err error) bool {
	return errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH)
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
