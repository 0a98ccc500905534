package service

import (
	"bytes"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/knockgate/knockgate/config"
)

// logBuf is a logger writing to a buffer the test reads.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuf) logger() func() *slog.Logger {
	lg := slog.New(slog.NewTextHandler(l, nil))
	return func() *slog.Logger { return lg }
}

// eventually polls cond for at most bound: a deadline of correctness,
// never a measure of speed.
func eventually(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// me is the user the test runs as: hooks run as it need no privilege.
func me(t *testing.T) string {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

// newRunner is a runner of hooks as the test's own user, with bounds.
func newRunner(t *testing.T, log *logBuf, running, waiting uint32, timeout time.Duration) *hookRunner {
	t.Helper()
	r := newHookRunner(log.logger())
	s := config.Defaults()
	s.HookUser, s.HookTimeout, s.HookMaxRunning, s.HookMaxWaiting = me(t), timeout, running, waiting
	s.Hooks = map[string]*config.Hooks{"default": {OnOpen: []string{"/bin/true"}}}
	if err := r.configure(&s); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	return r
}

func sh(script string) *hookJob {
	return &hookJob{service: "default", event: "open", source: "192.0.2.7",
		argv: []string{"/bin/sh", "-c", script}, env: []string{"KNOCKGATE_SOURCE=192.0.2.7"}}
}

// A hook's output reaches the log line by line, stdin reads nothing, and
// the environment is its own: PATH, HOME, USER, LOGNAME and the
// KNOCKGATE_ variables, nothing of run's.
func TestHookOutputAndEnvironment(t *testing.T) {
	t.Setenv("KG_RUNS_SECRET", "leak")
	var log logBuf
	r := newRunner(t, &log, 2, 2, time.Minute)
	r.submit(sh(`echo "first line"; echo "to stderr" >&2; if read x; then echo "stdin: $x"; else echo "stdin: eof"; fi
printf 'no newline at the end'; echo; env | sort; printf 'partial'`))
	eventually(t, 30*time.Second, "the hook ran", func() bool { return strings.Contains(log.String(), "msg=\"hook ran\"") })
	out := log.String()
	for _, want := range []string{
		`msg="hook output" service=default event=open src=192.0.2.7 stream=stdout line="first line"`,
		`stream=stderr line="to stderr"`,
		`line="stdin: eof"`,
		`line="no newline at the end"`,
		`line="KNOCKGATE_SOURCE=192.0.2.7"`,
		`line="PATH=` + hookPath + `"`,
		`line="USER=` + me(t) + `"`,
		`line=partial`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "KG_RUNS_SECRET") {
		t.Errorf("run's environment reached the hook:\n%s", out)
	}
	counts, _, _ := r.stats()
	if c := counts[hookLabel{"default", "open"}]; c.runs != 1 || c.failures != 0 {
		t.Errorf("counts %+v", c)
	}
}

// A long line is cut into lines of hookLineMax, and past hookLinesMax
// lines the rest is counted, not logged.
func TestHookOutputBounds(t *testing.T) {
	var log logBuf
	r := newRunner(t, &log, 1, 1, time.Minute)
	r.submit(sh(`head -c 9000 /dev/zero | tr '\0' x; echo; i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); done`))
	eventually(t, 30*time.Second, "the hook ran", func() bool { return strings.Contains(log.String(), "msg=\"hook ran\"") })
	out := log.String()
	if n := strings.Count(out, "msg=\"hook output\""); n != hookLinesMax {
		t.Errorf("%d output lines logged, want %d", n, hookLinesMax)
	}
	if !strings.Contains(out, "line="+strings.Repeat("x", hookLineMax)+"\n") {
		t.Errorf("the long line was not cut at %d", hookLineMax)
	}
	// 9000 bytes: 3 lines, then 97 of the 300.
	if !strings.Contains(out, `"hook output not logged: too many lines" service=default event=open src=192.0.2.7 lines=203`) {
		t.Errorf("the lines not logged are not counted:\n%s", out[len(out)-400:])
	}
}

// A hook that outlives hook_timeout is killed with its process group (a
// child it left in the background too), and counted as a timeout; a
// failing one is counted as a failure.
func TestHookTimeoutKillsTheGroup(t *testing.T) {
	var log logBuf
	r := newRunner(t, &log, 2, 2, 500*time.Millisecond)
	pidFile := filepath.Join(t.TempDir(), "child")
	r.submit(sh(`sleep 300 & echo $! > ` + pidFile + `; sleep 300`))
	r.submit(&hookJob{service: "web", event: "close", source: "192.0.2.8", argv: []string{"/bin/sh", "-c", "exit 3"}})
	eventually(t, 30*time.Second, "the hook killed", func() bool {
		counts, _, _ := r.stats()
		return counts[hookLabel{"default", "open"}].timeouts == 1 && counts[hookLabel{"web", "close"}].failures == 1
	})
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	eventually(t, 10*time.Second, "the background child killed", func() bool {
		return syscall.Kill(pid, 0) == syscall.ESRCH
	})
	out := log.String()
	if !strings.Contains(out, `msg="hook killed: it ran past hook_timeout" service=default event=open src=192.0.2.7 command=/bin/sh timeout=500ms`) ||
		!strings.Contains(out, `msg="hook failed" service=web event=close src=192.0.2.8 command=/bin/sh status="exit status 3"`) {
		t.Errorf("log:\n%s", out)
	}
}

// At most hook_max_running run and hook_max_waiting wait; the rest are
// dropped and counted, the first drop logged at once and the others in
// one line later; what waited runs once a slot is free.
func TestHookBounds(t *testing.T) {
	var log logBuf
	r := newRunner(t, &log, 2, 3, time.Minute)
	release := filepath.Join(t.TempDir(), "release")
	for range 20 {
		r.submit(sh(`while [ ! -e ` + release + ` ]; do sleep 0.05; done`))
	}
	counts, running, waiting := r.stats()
	if c := counts[hookLabel{"default", "open"}]; c.runs != 2 || c.dropped != 15 || running != 2 || waiting != 3 {
		t.Fatalf("after 20 submitted: %+v, %d running, %d waiting; want 2 runs, 15 dropped, 2 running, 3 waiting", c, running, waiting)
	}
	if n := strings.Count(log.String(), "hook dropped"); n != 1 {
		t.Errorf("%d drops logged at once, want 1:\n%s", n, log.String())
	}
	os.WriteFile(release, nil, 0o644)
	eventually(t, 30*time.Second, "what waited ran", func() bool {
		counts, running, waiting := r.stats()
		return counts[hookLabel{"default", "open"}].runs == 5 && running == 0 && waiting == 0
	})
	r.mu.Lock()
	r.lastDropLog = time.Now().Add(-hookDropReport)
	r.mu.Unlock()
	r.report()
	if !strings.Contains(log.String(), `msg="hooks dropped: too many running and waiting" dropped=14`) {
		t.Errorf("the drops not logged at once are not reported:\n%s", log.String())
	}
}

// Hooks run as hook_user: root's runner switches to it (needs root).
func TestHookRunsAsItsUser(t *testing.T) {
	requireRoot(t)
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	var log logBuf
	r := newHookRunner(log.logger())
	s := config.Defaults()
	s.HookUser = "nobody"
	s.Hooks = map[string]*config.Hooks{"default": {OnOpen: []string{"/bin/true"}}}
	if err := r.configure(&s); err != nil {
		t.Fatal(err)
	}
	defer r.stop()
	r.submit(sh(`echo "uid=$(id -u) gid=$(id -g) user=$USER"`))
	eventually(t, 30*time.Second, "the hook ran", func() bool { return strings.Contains(log.String(), "msg=\"hook ran\"") })
	if want := "line=\"uid=" + nobody.Uid + " gid=" + nobody.Gid + " user=nobody\""; !strings.Contains(log.String(), want) {
		t.Errorf("log lacks %s:\n%s", want, log.String())
	}
}

// A user that does not exist is refused, clearly; the default one says how
// it is made. Without a hook no user is needed.
func TestHookUserMissing(t *testing.T) {
	if _, err := user.Lookup(config.DefaultHookUser); err == nil {
		t.Logf("user %s exists here: only the named user's message is checked", config.DefaultHookUser)
	} else if _, err := lookupHookUser(config.DefaultHookUser); err == nil || !strings.Contains(err.Error(),
		"hook_user knockgate: no such user: the knockgate package makes this system user; without the package, make it (useradd --system") {
		t.Errorf("default user missing: %v", err)
	}
	if _, err := lookupHookUser("kgt-no-such-user"); err == nil || err.Error() != "hook_user kgt-no-such-user: no such user" {
		t.Errorf("named user missing: %v", err)
	}
	var log logBuf
	r := newHookRunner(log.logger())
	s := config.Defaults()
	s.HookUser = "kgt-no-such-user"
	if err := r.configure(&s); err != nil {
		t.Errorf("no hook, a missing user: %v", err)
	}
	s.Hooks = map[string]*config.Hooks{"web": {OnClose: []string{"/bin/true"}}}
	if err := r.configure(&s); err == nil {
		t.Errorf("a hook and a missing user: accepted")
	}
}

// A command without a directory is looked for in the hooks' PATH; one
// that is nowhere fails, counted.
func TestHookCommandLookup(t *testing.T) {
	if p, err := lookHookPath("sh"); err != nil || !strings.HasSuffix(p, "/sh") {
		t.Errorf("sh: %q, %v", p, err)
	}
	var log logBuf
	r := newRunner(t, &log, 1, 1, time.Minute)
	r.submit(&hookJob{service: "default", event: "open", source: "192.0.2.7", argv: []string{"kgt-no-such-command"}})
	eventually(t, 30*time.Second, "the failure counted", func() bool {
		counts, _, _ := r.stats()
		return counts[hookLabel{"default", "open"}].failures == 1
	})
	if !strings.Contains(log.String(), "kgt-no-such-command: not found in "+hookPath) {
		t.Errorf("log:\n%s", log.String())
	}
}

// requireRoot fails (CI=true) or skips a test that needs root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root")
	}
	t.Skip("needs root")
}
