package fwknop

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Client runs Debian's fwknop client (the real one, found on PATH) to
// make datagrams, for tests: in its test mode (-T) with the packet saved
// to a file (-B), never sent, and with no rc file, so that only the
// arguments decide.
type Client struct {
	Path string // the fwknop binary
	// Key and HMACKey are the keys, as the client's --key-base64-* take
	// them.
	Key, HMACKey string
}

// FindClient finds the fwknop client on PATH.
func FindClient() (string, error) { return exec.LookPath("fwknop") }

// Make runs the client with args (besides the keys and what makes it
// write the packet instead of sending it) and returns the datagram.
func (c *Client) Make(args ...string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "fwknop-client")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "packet")
	full := append([]string{"--no-rc-file", "--no-save-args", "--use-hmac",
		"--key-base64-rijndael", c.Key, "--key-base64-hmac", c.HMACKey, "-T", "-B", out}, args...)
	if !hasArg(args, "-D") {
		full = append(full, "-D", "192.0.2.1")
	}
	cmd := exec.Command(c.Path, full...)
	cmd.Env = append(os.Environ(), "HOME="+dir)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("fwknop %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("fwknop %s: no packet saved: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return bytes.TrimRight(b, "\n"), nil
}

func hasArg(args []string, a string) bool {
	for _, x := range args {
		if x == a {
			return true
		}
	}
	return false
}
