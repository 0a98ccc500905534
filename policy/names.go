package policy

import "fmt"

// CheckServiceName refuses what cannot be a service's name, naming it:
// [a-z0-9][a-z0-9_-]{0,30}.
func CheckServiceName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("service name %q: use a-z, 0-9, '-' and '_', at most 31, starting with a letter or digit", name)
	}
	return nil
}
