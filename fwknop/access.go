package fwknop

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Stanza is one SOURCE stanza of an access.conf, as fwknopd reads it
// (server/access.c), with what knockgate takes of it.
type Stanza struct {
	// Num is the stanza's place in the file, from 1, as fwknopd numbers
	// them in its log ("stanza #2"); Line is its SOURCE line.
	Num  int
	Line int
	// Source are the networks the datagram may come from (SOURCE: ANY,
	// addresses, CIDRs, a.b.c.d/m.m.m.m masks; knockgate also takes IPv6
	// ones, which fwknopd refuses). ANY is 0.0.0.0/0 and ::/0.
	Source []netip.Prefix
	// Open and Restrict are OPEN_PORTS and RESTRICT_PORTS: with Open, every
	// port asked for must be in it; any port asked for in Restrict refuses
	// the whole datagram.
	Open, Restrict []Port
	Key, HMACKey   []byte
	Mode           Mode
	// Timeout is FW_ACCESS_TIMEOUT (default 30s); MaxTimeout is
	// MAX_FW_TIMEOUT (default 300s), the most a client's own timeout (-f)
	// may ask for.
	Timeout, MaxTimeout time.Duration
	// RequireSource is REQUIRE_SOURCE_ADDRESS (REQUIRE_SOURCE): a datagram
	// asking for 0.0.0.0 (fwknop -s) is refused.
	RequireSource bool
	// RequireUser is REQUIRE_USERNAME ("": any).
	RequireUser string
}

// Name is the stanza as events and the log name it: "stanza 2 (line 14)".
func (s *Stanza) Name() string { return fmt.Sprintf("stanza %d (line %d)", s.Num, s.Line) }

// Port is a proto/port of OPEN_PORTS, RESTRICT_PORTS or a request.
type Port struct {
	Proto string // "tcp" or "udp"
	Num   uint16
}

func (p Port) String() string { return p.Proto + "/" + strconv.Itoa(int(p.Num)) }

// Access is an access.conf as knockgate takes it.
type Access struct {
	Path    string
	Stanzas []Stanza
	// Warnings are the lines knockgate ignores (harmless: they could
	// only narrow what a stanza allows, in ways knockgate never opens
	// anyway), one sentence each, naming the line.
	Warnings []string
}

// Error is a line of an access.conf that knockgate refuses.
type Error struct {
	Path string
	Line int // 0: the file as a whole
	Key  string
	Err  error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		b.WriteString(": " + e.Key)
	}
	b.WriteString(": " + e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Defaults of a stanza (server/fwknopd_common.h).
const (
	DefaultTimeout    = 30 * time.Second
	DefaultMaxTimeout = 300 * time.Second
	// maxTimeout is fwknopd's range check of both (RCHK_MAX_FW_TIMEOUT).
	maxTimeout = 2 << 22
	// MaxKey and MaxHMACKey bound the keys (RIJNDAEL_MAX_KEYSIZE,
	// MAX_DIGEST_BLOCK_LEN): fwknopd takes longer ones and then fails
	// every datagram; knockgate says so at once.
	MaxKey     = 32
	MaxHMACKey = 128
)

// ignored are the keys knockgate reads past with a warning: each could
// only narrow what the stanza lets in, through something knockgate never
// does (GnuPG datagrams and command messages are refused whatever they
// say), so leaving it out opens nothing fwknopd would not.
var ignored = map[string]string{
	"GPG_HOME_DIR":                "GnuPG datagrams are refused",
	"GPG_EXE":                     "GnuPG datagrams are refused",
	"GPG_DECRYPT_ID":              "GnuPG datagrams are refused",
	"GPG_DECRYPT_PW":              "GnuPG datagrams are refused",
	"GPG_ALLOW_NO_PW":             "GnuPG datagrams are refused",
	"GPG_REQUIRE_SIG":             "GnuPG datagrams are refused",
	"GPG_DISABLE_SIG":             "GnuPG datagrams are refused",
	"GPG_IGNORE_SIG_VERIFY_ERROR": "GnuPG datagrams are refused",
	"GPG_REMOTE_ID":               "GnuPG datagrams are refused",
	"GPG_FINGERPRINT_ID":          "GnuPG datagrams are refused",
	"ENABLE_CMD_EXEC":             "command messages (fwknop -C) are refused",
	"ENABLE_CMD_SUDO_EXEC":        "command messages (fwknop -C) are refused",
	"CMD_EXEC_USER":               "command messages (fwknop -C) are refused",
	"CMD_EXEC_GROUP":              "command messages (fwknop -C) are refused",
	"CMD_SUDO_EXEC_USER":          "command messages (fwknop -C) are refused",
	"CMD_SUDO_EXEC_GROUP":         "command messages (fwknop -C) are refused",
}

// refused are the keys knockgate cannot honour, and why: each changes what
// a stanza does in a way the gate cannot do (or would do wider than
// fwknopd), so the file is refused rather than read differently.
var refused = map[string]string{
	"%include":            "includes are not supported: put the stanzas in this file",
	"%include_folder":     "includes are not supported: put the stanzas in this file",
	"%include_keys":       "includes are not supported: put the keys in the stanza",
	"DESTINATION":         "the gate does not match datagrams by destination address",
	"ACCESS_EXPIRE":       "stanzas that expire are not supported",
	"ACCESS_EXPIRE_EPOCH": "stanzas that expire are not supported",
	"CMD_CYCLE_OPEN":      "the gate opens its own ports; it runs no commands",
	"CMD_CYCLE_CLOSE":     "the gate opens its own ports; it runs no commands",
	"CMD_CYCLE_TIMER":     "the gate opens its own ports; it runs no commands",
	"FORCE_NAT":           "NAT access is not supported",
	"FORCE_SNAT":          "NAT access is not supported",
	"FORCE_MASQUERADE":    "NAT access is not supported",
	"DISABLE_DNAT":        "NAT access is not supported",
	"FORWARD_ALL":         "NAT access is not supported",
}

// Keys lists the keys knockgate reads, for README and messages.
var Keys = []string{"SOURCE", "OPEN_PORTS", "RESTRICT_PORTS", "KEY", "KEY_BASE64", "HMAC_KEY",
	"HMAC_KEY_BASE64", "HMAC_DIGEST_TYPE", "ENCRYPTION_MODE", "FW_ACCESS_TIMEOUT", "MAX_FW_TIMEOUT",
	"REQUIRE_SOURCE_ADDRESS", "REQUIRE_SOURCE", "REQUIRE_USERNAME"}

// IgnoredKeys and RefusedKeys list the others knockgate knows, sorted.
func IgnoredKeys() []string { return sortedKeys(ignored) }
func RefusedKeys() []string { return sortedKeys(refused) }

func sortedKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ReadAccess reads the access.conf at path, refusing one that anyone but
// root could read or change (its keys open the gate): root's, mode 600 or
// tighter, as knockgate's own key files.
func ReadAccess(path string) (*Access, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open access file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("access file %s: %w", path, err)
	}
	if err := checkOwner(path, st); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, fmt.Errorf("read access file %s: %w", path, err)
	}
	return ParseAccess(path, buf.Bytes())
}

func checkOwner(path string, st fs.FileInfo) error {
	if !st.Mode().IsRegular() {
		return fmt.Errorf("access file %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("access file %s is open to group or others (mode %04o): its keys would open the gate to them; chmod 600 it", path, perm)
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok && s.Uid != 0 {
		return fmt.Errorf("access file %s is owned by uid %d, not root: that user can read its keys; chown root it", path, s.Uid)
	}
	return nil
}

// ParseAccess reads an access.conf as fwknopd does (a line is a key, blanks,
// and its value up to a ';' or the end; '#' and ';' start comments; a key
// may end with ':'; SOURCE starts a stanza, and lines before the first are
// skipped) and checks it as knockgate takes it: every stanza has KEY (or
// KEY_BASE64) and HMAC_KEY (or HMAC_KEY_BASE64), an HMAC of SHA-256 and
// an encryption mode of CBC; a key knockgate does not take is
// refused, or ignored with a warning where that is harmless (see ignored,
// refused). The first mistake is an *Error naming its line and key.
func ParseAccess(path string, data []byte) (*Access, error) {
	a := &Access{Path: path}
	fail := func(line int, key string, format string, args ...any) error {
		return &Error{Path: path, Line: line, Key: key, Err: fmt.Errorf(format, args...)}
	}
	type pending struct {
		Stanza
		hmacType string
		hmacLine int
	}
	var stanzas []*pending
	var cur *pending
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 64*1024)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if line == "" || strings.ContainsRune("#;\r", rune(line[0])) {
			continue
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		fields := strings.Fields(line)
		key := fields[0]
		val := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), key))
		if i := strings.IndexAny(val, ";\r"); i >= 0 {
			val = strings.TrimSpace(val[:i])
		}
		if i := strings.LastIndexByte(key, ':'); i >= 0 {
			key = key[:i]
		}
		if val == "" {
			return nil, fail(n, key, "no value")
		}
		if why, ok := refused[key]; ok {
			return nil, fail(n, key, "not supported: %s", why)
		}
		if key == "SOURCE" {
			cur = &pending{Stanza: Stanza{Num: len(stanzas) + 1, Line: n, Timeout: DefaultTimeout,
				MaxTimeout: DefaultMaxTimeout}}
			stanzas = append(stanzas, cur)
			src, err := parseSources(val)
			if err != nil {
				return nil, fail(n, key, "%v", err)
			}
			cur.Source = src
			continue
		}
		if cur == nil {
			continue // fwknopd skips what comes before the first SOURCE
		}
		if why, ok := ignored[key]; ok {
			a.Warnings = append(a.Warnings, fmt.Sprintf("%s:%d: %s ignored: %s", path, n, key, why))
			continue
		}
		var err error
		switch key {
		case "OPEN_PORTS":
			cur.Open, err = parsePorts(val)
		case "RESTRICT_PORTS":
			cur.Restrict, err = parsePorts(val)
		case "KEY", "KEY_BASE64", "HMAC_KEY", "HMAC_KEY_BASE64":
			var k []byte
			if k, err = parseKey(key, val); err == nil {
				if strings.HasPrefix(key, "HMAC") {
					cur.HMACKey, cur.hmacLine = k, n
				} else {
					cur.Key = k
				}
			}
		case "HMAC_DIGEST_TYPE":
			cur.hmacType = strings.ToLower(val)
			switch cur.hmacType {
			case "sha256":
			case "md5", "sha1", "sha384", "sha512", "sha3_256", "sha3_512":
				err = fmt.Errorf("%s is not supported: the gate verifies HMAC-SHA256 (fwknop's default) in XDP", val)
			default:
				err = fmt.Errorf("%q must be one of md5, sha1, sha256, sha384, sha512, sha3_256, sha3_512 (the gate takes sha256)", val)
			}
		case "ENCRYPTION_MODE":
			switch strings.ToUpper(val) {
			case "CBC":
				cur.Mode = CBC
			case "LEGACY":
				err = fmt.Errorf("%s is not supported: the fwknop client refuses legacy mode with an HMAC, and the gate verifies every datagram's HMAC", val)
			case "CTR", "PCBC", "OFB", "CFB", "ECB", "ASYMMETRIC":
				err = fmt.Errorf("%s is not supported: CBC (the default) only", val)
			default:
				err = fmt.Errorf("unrecognized mode %q: CBC", val)
			}
		case "FW_ACCESS_TIMEOUT":
			cur.Timeout, err = parseSeconds(val)
		case "MAX_FW_TIMEOUT":
			cur.MaxTimeout, err = parseSeconds(val)
		case "REQUIRE_SOURCE_ADDRESS", "REQUIRE_SOURCE":
			cur.RequireSource = strings.HasPrefix(strings.ToUpper(val), "Y")
		case "REQUIRE_USERNAME":
			cur.RequireUser = val
		default:
			err = fmt.Errorf("unknown key (knockgate reads %s)", strings.Join(Keys, ", "))
		}
		if err != nil {
			return nil, fail(n, key, "%v", err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fail(n+1, "", "%v", err)
	}
	if len(stanzas) == 0 {
		return nil, fail(0, "", "no SOURCE stanza")
	}
	for _, s := range stanzas {
		if len(s.Key) == 0 {
			return nil, fail(s.Line, "SOURCE", "stanza %d has no KEY or KEY_BASE64 (GnuPG stanzas are not supported)", s.Num)
		}
		if len(s.HMACKey) == 0 {
			return nil, fail(s.Line, "SOURCE", "stanza %d has no HMAC_KEY or HMAC_KEY_BASE64: the gate verifies every datagram's HMAC in XDP, so a stanza without one could open nothing", s.Num)
		}
		if bytes.Equal(s.Key, s.HMACKey) {
			return nil, fail(s.hmacLine, "HMAC_KEY", "the encryption key and the HMAC key of stanza %d are the same (fwknopd refuses that too)", s.Num)
		}
		a.Stanzas = append(a.Stanzas, s.Stanza)
	}
	return a, nil
}

// parseKey reads KEY, HMAC_KEY (the text is the key) or their _BASE64
// forms.
func parseKey(key, val string) ([]byte, error) {
	if strings.EqualFold(val, "__CHANGEME__") {
		return nil, errors.New("not set (__CHANGEME__)")
	}
	k := []byte(val)
	if strings.HasSuffix(key, "_BASE64") {
		var err error
		if k, err = base64.StdEncoding.DecodeString(val); err != nil {
			if k, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(val, "=")); err != nil {
				return nil, errors.New("not base64")
			}
		}
	}
	max := MaxKey
	if strings.HasPrefix(key, "HMAC") {
		max = MaxHMACKey
	}
	if len(k) == 0 || len(k) > max {
		return nil, fmt.Errorf("%d bytes: fwknop takes 1 to %d", len(k), max)
	}
	return k, nil
}

func parseSeconds(val string) (time.Duration, error) {
	n, err := strconv.Atoi(val)
	if err != nil || n < 0 || n > maxTimeout {
		return 0, fmt.Errorf("%q: seconds, 0 to %d", val, maxTimeout)
	}
	if n == 0 {
		return 0, errors.New("0: at least 1 second")
	}
	return time.Duration(n) * time.Second, nil
}

// parseSources reads SOURCE: comma-separated ANY, addresses, CIDRs and
// a.b.c.d/m.m.m.m masks.
func parseSources(val string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range strings.Split(val, ",") {
		item = strings.TrimSpace(item)
		if strings.EqualFold(item, "ANY") {
			out = append(out, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))
			continue
		}
		addr, mask, hasMask := strings.Cut(item, "/")
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return nil, fmt.Errorf("%q: not an address, a CIDR or ANY", item)
		}
		bits := a.BitLen()
		if hasMask {
			if m, err := netip.ParseAddr(mask); err == nil && m.Is4() && a.Is4() {
				if bits, err = maskBits(m); err != nil {
					return nil, fmt.Errorf("%q: %v", item, err)
				}
			} else if bits, err = strconv.Atoi(mask); err != nil || bits < 1 || bits > a.BitLen() {
				return nil, fmt.Errorf("%q: a prefix length of 1 to %d", item, a.BitLen())
			}
		}
		out = append(out, netip.PrefixFrom(a, bits).Masked())
	}
	return out, nil
}

func maskBits(m netip.Addr) (int, error) {
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n := 0
	for v&(1<<31) != 0 {
		n++
		v <<= 1
	}
	if v != 0 {
		return 0, errors.New("a mask whose ones are not contiguous")
	}
	return n, nil
}

// parsePorts reads a proto/port list: "tcp/22, udp/1194".
func parsePorts(val string) ([]Port, error) {
	var out []Port
	for _, item := range strings.Split(val, ",") {
		p, err := ParsePort(strings.TrimSpace(item))
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// ParsePort reads "tcp/22" (fwknopd's parse_proto_and_port: tcp or udp in
// any case, a port 0-65535).
func ParsePort(s string) (Port, error) {
	proto, port, ok := strings.Cut(s, "/")
	if !ok {
		return Port{}, fmt.Errorf("%q: want proto/port", s)
	}
	proto = strings.ToLower(proto)
	if proto != "tcp" && proto != "udp" {
		return Port{}, fmt.Errorf("%q: the protocol is tcp or udp", s)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return Port{}, fmt.Errorf("%q: a port of 0 to 65535", s)
	}
	return Port{Proto: proto, Num: uint16(n)}, nil
}

// HMACKeys are the stanzas' distinct HMAC keys, in the order their first
// stanzas come, with the stanzas (by Num) that use each: the keys the
// XDP program tries, in turn.
func (a *Access) HMACKeys() (keys [][]byte, users [][]int) {
	for _, s := range a.Stanzas {
		i := slices.IndexFunc(keys, func(k []byte) bool { return bytes.Equal(k, s.HMACKey) })
		if i < 0 {
			keys = append(keys, s.HMACKey)
			users = append(users, nil)
			i = len(keys) - 1
		}
		users[i] = append(users[i], s.Num)
	}
	return keys, users
}
