package policy

import (
	"fmt"
	"hash/fnv"
)

// CheckServiceName refuses what cannot be a service's name, naming it:
// [a-z0-9][a-z0-9_-]{0,30}.
func CheckServiceName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("service name %q: use a-z, 0-9, '-' and '_', at most 31, starting with a letter or digit", name)
	}
	return nil
}

// ServiceHash is what a version-2 SPA packet names a service by, and what
// the program finds it by (name_hash in bpf/spa.h): FNV-1a (32 bits) of its
// name, 1 in place of 0 (which marks an unused request). Validate refuses
// two services of one hash.
func ServiceHash(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	if v := h.Sum32(); v != 0 {
		return v
	}
	return 1
}

// HashError is two services of a policy whose names have one ServiceHash:
// an SPA request could not tell them apart. B is the later of the two.
type HashError struct{ A, B string }

func (e *HashError) Error() string {
	return fmt.Sprintf("services %s and %s have the same name hash (%08x): an SPA request could not tell them apart; rename one",
		e.A, e.B, ServiceHash(e.A))
}
