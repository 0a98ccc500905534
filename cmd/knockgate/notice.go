//go:build linux

package main

import (
	"net/netip"
	"os/user"

	"github.com/knockgate/knockgate/service"
)

// tellRun tells the `run` serving gate what grant or revoke changed, so
// that its hooks learn who did it and its fleet writes it at once. Without
// a run (or with one that takes no notices) nothing is sent: run's check of
// the grant map sees the change later, as an unannounced one.
func tellRun(e *env, gate, op string, addr netip.Addr, svc string, expires uint64) {
	n := service.Notice{Op: op, Addr: addr.String(), Service: svc, Expires: expires, Operator: operator(e)}
	service.SendNotice(gate, n)
}

// operator is who runs the command: the user sudo was run by, else the
// user itself.
func operator(e *env) string {
	if u := e.getenv("SUDO_USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}
