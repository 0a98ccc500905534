package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/knockgate/knockgate/maps"
)

// runDir holds what run shares with the commands: the fleet's figures and
// the notice socket.
const runDir = "/run/knockgate"

// Notice is what `knockgate grant` and `knockgate revoke` tell the `run`
// serving the gate, once the grant map is changed: neither goes through
// the program's ring buffer, and run would otherwise learn of it only from
// its next check of the map. The hooks learn who granted, and the fleet
// writes the grant or the revoke at once.
type Notice struct {
	Op      string `json:"op"` // "grant" or "revoke"
	Addr    string `json:"addr"`
	Service string `json:"service,omitempty"` // revoke: "" for every service
	// Expires is a grant's expiry (CLOCK_BOOTTIME ns, as the map has it).
	Expires uint64 `json:"expires_ns,omitempty"`
	// Operator is who ran the command ($SUDO_USER, else the user).
	Operator string `json:"operator,omitempty"`
}

// NoticeSocket is where the run serving gate takes notices: a datagram
// socket only root may write to.
func NoticeSocket(gate string) string { return filepath.Join(runDir, "notice-"+gate+".sock") }

// SendNotice tells the run serving gate of n, if one does; an error says
// none took it (no run, or one of a release without notices), which
// changes nothing: its check of the map sees the change later.
func SendNotice(gate string, n Notice) error {
	b, err := json.Marshal(n)
	if err != nil {
		return err
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: NoticeSocket(gate), Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(time.Second))
	_, err = c.Write(b)
	return err
}

// noticeListener is run's end of the notice socket.
type noticeListener struct {
	conn *net.UnixConn
	path string
	done chan struct{}
}

// listenNotices takes notices for gate, calling handle for each until
// closed. A socket left by a run before this one is replaced.
func listenNotices(gate string, handle func(Notice)) (*noticeListener, error) {
	path := NoticeSocket(gate)
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, fmt.Errorf("notices: %w", err)
	}
	os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notices: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		conn.Close()
		os.Remove(path)
		return nil, fmt.Errorf("notices: %w", err)
	}
	l := &noticeListener{conn: conn, path: path, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			var nt Notice
			if json.Unmarshal(buf[:n], &nt) == nil {
				handle(nt)
			}
		}
	}()
	return l, nil
}

func (l *noticeListener) close() {
	if l == nil {
		return
	}
	l.conn.Close()
	<-l.done
	os.Remove(l.path)
}

// grantOf reads a notice's grant: its address, and its service (default
// when it names none) and expiry.
func (n Notice) grantOf() (id maps.GrantID, exp time.Time, err error) {
	a, err := netip.ParseAddr(n.Addr)
	if err != nil {
		return id, exp, err
	}
	id = maps.GrantID{Addr: a.Unmap(), Service: n.Service}
	if n.Expires != 0 {
		exp = maps.BootToTime(n.Expires)
	}
	return id, exp, nil
}
