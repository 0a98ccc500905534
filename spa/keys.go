package spa

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/knockgate/knockgate/policy"
)

// MaxKeys is how many keys a gate holds (KG_SPA_KEYS).
const MaxKeys = 1024

// Key is one SPA key, a line of a key file:
//
//	ID HEX NAME [any-address] [open=DURATION] [services=NAME,...]
//
// ID is 1 to 4294967295, HEX the 16 secret bytes as 32 hex digits, NAME
// what status and events call it; any-address lets its packets open an
// address other than their source, open= gives its grants their own window,
// services= names the gate's services it may open (default: "default").
type Key struct {
	ID         uint32
	Secret     [16]byte
	Name       string
	AnyAddress bool
	Open       time.Duration // 0: each service's open window
	// Services the key may open; nil: the service "default" alone.
	Services []string
}

// Scope is the services k may open: without services=, the service every
// gate has, policy.DefaultService.
func (k *Key) Scope() []string {
	if len(k.Services) == 0 {
		return []string{policy.DefaultService}
	}
	return k.Services
}

// Equal says whether two keys are the same in every field.
func (k *Key) Equal(o *Key) bool {
	return k.ID == o.ID && k.Secret == o.Secret && k.Name == o.Name && k.AnyAddress == o.AnyAddress &&
		k.Open == o.Open && slices.Equal(k.Services, o.Services)
}

// NameLen is the longest key name (the map keeps it NUL-padded in 32).
const NameLen = 31

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._@+-]{1,31}$`)

// NewKey makes a key with random secret bytes; id 0 picks a random id.
func NewKey(id uint32, name string) (Key, error) {
	if err := checkName(name); err != nil {
		return Key{}, err
	}
	k := Key{ID: id, Name: name}
	if _, err := rand.Read(k.Secret[:]); err != nil {
		return Key{}, fmt.Errorf("make key: %w", err)
	}
	for k.ID == 0 {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return Key{}, fmt.Errorf("make key id: %w", err)
		}
		k.ID = binary.BigEndian.Uint32(b[:])
	}
	return k, nil
}

func checkName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("bad key name %s (1-%d of A-Z a-z 0-9 . _ @ + -)", quote(name), NameLen)
	}
	return nil
}

// quote is a field for an error message, unless it may be a secret (a long
// hex string in the wrong place: fields out of order, a pasted key): then
// only its length is said. Errors end up in logs.
func quote(s string) string {
	if LooksLikeSecret(s) {
		return fmt.Sprintf("(a %d-digit hex string: a key in the wrong place?)", len(s))
	}
	return strconv.Quote(s)
}

// LooksLikeSecret: s is hex digits, 16 or more of them.
func LooksLikeSecret(s string) bool {
	return len(s) >= 16 && isHex(s)
}

func isHex(s string) bool {
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return false
		}
	}
	return true
}

// Line is the key as a key-file line.
func (k *Key) Line() string {
	s := fmt.Sprintf("%d %s %s", k.ID, hex.EncodeToString(k.Secret[:]), k.Name)
	if k.AnyAddress {
		s += " any-address"
	}
	if k.Open > 0 {
		s += " open=" + k.Open.String()
	}
	if len(k.Services) > 0 {
		s += " services=" + strings.Join(k.Services, ",")
	}
	return s
}

// ParseID reads a key id: 1 to 4294967295, in decimal.
func ParseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("bad key id %s (1-4294967295)", quote(s))
	}
	return uint32(n), nil
}

// ParseSecret reads 32 hex digits.
func ParseSecret(s string) ([16]byte, error) {
	var out [16]byte
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != 16 {
		return out, errors.New("bad key: want 32 hex digits (16 bytes)")
	}
	copy(out[:], b)
	return out, nil
}

// ParseLine reads one key-file line (without comment).
func ParseLine(line string) (Key, error) {
	f := strings.Fields(line)
	if len(f) < 3 {
		return Key{}, fmt.Errorf("want ID HEX NAME [any-address] [open=DURATION] [services=NAME,...], got %d fields", len(f))
	}
	var k Key
	var err error
	if k.ID, err = ParseID(f[0]); err != nil {
		return Key{}, err
	}
	if k.Secret, err = ParseSecret(f[1]); err != nil {
		return Key{}, err // the secret itself is never repeated in an error
	}
	if err := checkName(f[2]); err != nil {
		return Key{}, err
	}
	k.Name = f[2]
	for _, opt := range f[3:] {
		switch {
		case opt == "any-address":
			k.AnyAddress = true
		case strings.HasPrefix(opt, "open="):
			d, err := time.ParseDuration(opt[len("open="):])
			if err != nil || d <= 0 {
				return Key{}, fmt.Errorf("bad open= %s: want a positive duration, e.g. open=1h", quote(opt[len("open="):]))
			}
			k.Open = d
		case strings.HasPrefix(opt, "services="):
			if k.Services, err = ParseServices(opt[len("services="):]); err != nil {
				return Key{}, fmt.Errorf("services=: %w", err)
			}
		default:
			return Key{}, fmt.Errorf("unknown key option %s (any-address, open=DURATION, services=NAME,...)", quote(opt))
		}
	}
	return k, nil
}

// ParseServices reads a list of service names, comma-separated (a key's
// services=, the client's --service): each a service's name
// (policy.CheckServiceName), once. Its errors never repeat what may be a
// secret.
func ParseServices(list string) ([]string, error) {
	var out []string
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if err := policy.CheckServiceName(name); err != nil {
			if LooksLikeSecret(name) {
				return nil, fmt.Errorf("bad service name %s", quote(name))
			}
			return nil, err
		}
		if slices.Contains(out, name) {
			return nil, fmt.Errorf("service %s named twice", quote(name))
		}
		out = append(out, name)
	}
	return out, nil
}

// ParseKeys reads a key file's lines from r ('#' starts a comment); errors
// name source and the line.
func ParseKeys(r io.Reader, source string) ([]Key, error) {
	var keys []Key
	seen := map[uint32]int{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if strings.TrimSpace(line) == "" {
			continue
		}
		k, err := ParseLine(line)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", source, n, err)
		}
		if at, dup := seen[k.ID]; dup {
			return nil, fmt.Errorf("%s line %d: key id %d is on line %d already", source, n, k.ID, at)
		}
		seen[k.ID] = n
		keys = append(keys, k)
		if len(keys) > MaxKeys {
			return nil, fmt.Errorf("%s: more than %d keys", source, MaxKeys)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", source, err)
	}
	return keys, nil
}

// Access says who may read a key file besides its owner.
type Access int

const (
	// OwnerOnly: group and others may not read (a client's key, like an
	// SSH private key).
	OwnerOnly Access = iota
	// RootOnly: also owned by root (the gate's keys).
	RootOnly
)

// ReadKeyFile reads the key file at path, refusing one that others than
// its owner (RootOnly: than root) could read: a key anyone can read opens
// the gate to anyone.
func ReadKeyFile(path string, access Access) ([]Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open key file: %w", err)
	}
	defer f.Close()
	if err := checkAccess(f, path, access); err != nil {
		return nil, err
	}
	return ParseKeys(f, path)
}

func checkAccess(f *os.File, path string, access Access) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("key file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("key file %s is not a regular file", path)
	}
	// Each system says who may read a file its own way: mode bits and an
	// owner's uid on Unix, an ACL on Windows (access_*.go).
	return checkOwnerOnly(f, st, path, access)
}
