//go:build linux

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/knockgate/knockgate/config"
	"github.com/knockgate/knockgate/loader"
	"github.com/knockgate/knockgate/policy"
)

// messageError shows its own message but still matches its cause with
// errors.Is (loader.ErrNotAttached, loader.ErrAttached).
type messageError struct {
	msg string
	err error
}

func (m *messageError) Error() string { return m.msg }
func (m *messageError) Unwrap() error { return m.err }

// openGate reopens the gate arg names: a gate's name, or an interface of
// one gate. When there is none, it says whether the interface exists at
// all. Pins are looked at before the interface, so a gate whose interface
// has vanished can still be inspected and detached.
func openGate(arg string) (*loader.Gate, error) {
	if err := checkPinAccess(); err != nil {
		return nil, err
	}
	name, err := loader.Resolve(arg)
	if errors.Is(err, loader.ErrNotAttached) {
		return nil, notAttached(arg, err)
	}
	if err != nil {
		return nil, err
	}
	g, err := loader.Open(name)
	if errors.Is(err, loader.ErrNotAttached) {
		return nil, notAttached(arg, err)
	}
	return g, err
}

func notAttached(arg string, cause error) error {
	if _, ierr := loader.Interface(arg); ierr != nil {
		return &messageError{ierr.Error(), cause}
	}
	return &messageError{fmt.Sprintf("knockgate is not attached to %s", arg), cause}
}

// noService is what maps.ErrNoService (the cause) says to the user: the
// gate has no service of that name, and these are the ones it has (from p
// when the policy was read already, else read now).
func noService(g *loader.Gate, p *policy.Policy, service string, cause error) error {
	if p == nil {
		held, err := g.Policy()
		if err != nil {
			return cause
		}
		p = &held
	}
	return &messageError{fmt.Sprintf("gate %s has no service %s (it has %s)", g.Name, service, config.ServiceNames(p)), cause}
}

// modes is how a gate's interfaces are attached, each way once: "native",
// "native, generic", or "not attached".
func modes(ifaces []loader.Iface) string {
	var out []string
	for _, ifc := range ifaces {
		if ifc.State == loader.Attached && !slices.Contains(out, string(ifc.Mode)) {
			out = append(out, string(ifc.Mode))
		}
	}
	if len(out) == 0 {
		return "not attached"
	}
	return strings.Join(out, ", ")
}

// describeIfaces is the interface part of what attach prints:
// "eth0 (native), wg0 (generic)", with the gate's name when it is not the
// only interface's.
func describeIfaces(gate string, ifaces []loader.Iface) string {
	parts := make([]string, len(ifaces))
	for i, ifc := range ifaces {
		how := string(ifc.Mode)
		if ifc.State != loader.Attached {
			how = string(ifc.State)
		}
		parts[i] = fmt.Sprintf("%s (%s)", ifc.Name, how)
	}
	s := strings.Join(parts, ", ")
	if len(ifaces) != 1 || ifaces[0].Name != gate {
		s += " as gate " + gate
	}
	return s
}

// checkPinAccess turns "cannot read the pin directory" into a clear message:
// the loader would report it as "not attached", which misleads a non-root
// user.
func checkPinAccess() error {
	_, err := os.Stat(loader.PinRoot)
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w (knockgate needs root)", err)
	}
	return nil
}

// pickGates resolves the optional IFACE argument of status and events: the
// named interface, or else every attached gate. With no name, none attached
// is an error, and so are several unless many is true.
func pickGates(args []string, list func() ([]string, error), many bool) ([]string, error) {
	if len(args) == 1 {
		return args, nil
	}
	names, err := list()
	if err != nil {
		return nil, err
	}
	switch {
	case len(names) == 0:
		return nil, errors.New("no gate attached")
	case len(names) > 1 && !many:
		return nil, fmt.Errorf("several gates attached (%s): name one", strings.Join(names, ", "))
	}
	return names, nil
}

// listGates is loader.List with a clear error for a non-root user.
func listGates() ([]string, error) {
	if err := checkPinAccess(); err != nil {
		return nil, err
	}
	return loader.List()
}

// stamp formats a wall-clock time the same way everywhere: RFC 3339, UTC.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// portsList is ports with the protocol always spelled out, for JSON: runs
// of three or more as "1000-2000/tcp".
func portsList(ports []policy.Port) []string {
	out := []string{}
	for i := 0; i < len(ports); {
		j := i
		for j+1 < len(ports) && ports[j+1].Proto == ports[i].Proto && ports[j+1].Num == ports[j].Num+1 {
			j++
		}
		if j-i >= 2 {
			out = append(out, fmt.Sprintf("%d-%d/%s", ports[i].Num, ports[j].Num, ports[i].Proto))
		} else {
			for k := i; k <= j; k++ {
				out = append(out, fmt.Sprintf("%d/%s", ports[k].Num, ports[k].Proto))
			}
		}
		i = j + 1
	}
	return out
}

func prefixList(prefixes []netip.Prefix) []string {
	out := make([]string, len(prefixes))
	for i, p := range prefixes {
		out[i] = p.String()
	}
	return out
}
