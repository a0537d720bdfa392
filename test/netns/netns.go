package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// RequirePrivEnv names the environment variable that turns RequirePriv's skip
// into a failure, so that CI cannot pass by skipping every kernel test.
const RequirePrivEnv = "GATEHOUSE_REQUIRE_PRIV"

// runDir is where `ip netns` keeps its namespace mounts.
const runDir = "/run/netns"

// settleTimeout bounds how long Connect and cleanup wait for the kernel to
// reach a state; reaching it is the normal case and takes milliseconds.
const settleTimeout = 10 * time.Second

var (
	errNotDocumentation = errors.New("not a documentation address (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)")
	errNotLiteral       = errors.New("host must be an IP literal")
	errRestore          = errors.New("restore original network namespace")
)

// documentation holds the only prefixes tests may put on interfaces or routes
// (RFC 5737, RFC 3849).
var documentation = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("2001:db8::/32"),
}

// RequirePriv skips the test unless it runs as root with iproute2 installed.
// With GATEHOUSE_REQUIRE_PRIV=1 it fails instead of skipping.
func RequirePriv(t testing.TB) {
	t.Helper()
	var reasons []string
	if euid := os.Geteuid(); euid != 0 {
		reasons = append(reasons, fmt.Sprintf("needs root (euid is %d)", euid))
	}
	if _, err := exec.LookPath("ip"); err != nil {
		reasons = append(reasons, "needs iproute2 (`ip` not found in PATH)")
	}
	if len(reasons) == 0 {
		return
	}
	SkipOrFail(t, "privileged test: "+strings.Join(reasons, ", "))
}

// SkipOrFail skips the test, saying why; with GATEHOUSE_REQUIRE_PRIV=1 (as
// in CI, which installs everything the tests need) it fails instead, so
// that nothing a test checks is silently left out.
func SkipOrFail(t testing.TB, why string) {
	t.Helper()
	if os.Getenv(RequirePrivEnv) == "1" {
		t.Fatalf("%s; %s=1 forbids skipping", why, RequirePrivEnv)
	}
	t.Skip(why)
}

// RequireTool returns the path of a program a test runs (from the Debian
// package pkg), or skips or fails as SkipOrFail does without it.
func RequireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		SkipOrFail(t, fmt.Sprintf("%s not found in PATH (Debian package %s)", name, pkg))
	}
	return path
}

// NS is one network namespace owned by one test.
type NS struct {
	// Name is the `ip netns` name, unique per test and process, e.g.
	// "gh-3f2a91c4-cloud".
	Name string

	role string // sanitised role, used in interface names

	mu   sync.Mutex
	cmds []*exec.Cmd // from Command, killed on cleanup
}

// New creates a namespace for role (a short word such as "client" or
// "gate"), brings its loopback up, enables IPv6 without duplicate address
// detection, and registers a cleanup that kills the processes started in it
// and deletes it. New calls RequirePriv.
func New(t testing.TB, role string) *NS {
	t.Helper()
	RequirePriv(t)
	n := &NS{role: sanitise(role, 12)}
	// The random part makes collisions with parallel tests in this or another
	// process unlikely; an existing name is retried rather than reused.
	for attempt := 0; ; attempt++ {
		n.Name = "gh-" + randomHex(4) + "-" + n.role
		out, err := run("ip", "netns", "add", n.Name)
		if err == nil {
			break
		}
		if attempt < 3 && strings.Contains(out, "exists") {
			continue
		}
		t.Fatalf("netns: create namespace %s: %v: %s", n.Name, err, out)
	}
	t.Cleanup(func() { n.cleanup(t) })

	if out, err := run("ip", "-n", n.Name, "link", "set", "dev", "lo", "up"); err != nil {
		t.Fatalf("netns: %s: set lo up: %v: %s", n.Name, err, out)
	}
	// Interfaces created later inherit "default"; without DAD, addresses
	// (link-local ones too) are usable at once and tests need no sleeps.
	for _, kv := range [][2]string{
		{"net.ipv6.conf.all.disable_ipv6", "0"},
		{"net.ipv6.conf.default.disable_ipv6", "0"},
		{"net.ipv6.conf.all.accept_dad", "0"},
		{"net.ipv6.conf.default.accept_dad", "0"},
		{"net.ipv6.conf.all.accept_ra", "0"},
		{"net.ipv6.conf.default.accept_ra", "0"},
		{"net.ipv6.conf.default.router_solicitations", "0"},
	} {
		n.Sysctl(t, kv[0], kv[1])
	}
	return n
}

// Path returns the namespace's bind mount, /run/netns/<Name>; open it to get
// a namespace file descriptor.
func (n *NS) Path() string { return filepath.Join(runDir, n.Name) }

// Exec runs name with args inside the namespace (`ip netns exec`) and returns
// its standard output. It fails the test if the command fails, quoting its
// standard error. Call it from the test goroutine.
func (n *NS) Exec(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("netns: %s: %s %s: %v\nstdout: %s\nstderr: %s",
			n.Name, name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// Command returns an unstarted command that runs name with args inside the
// namespace. If the test starts it, cleanup kills it (SIGKILL, by PID) and
// reaps it; a concurrent cmd.Wait by the test then reports an error.
func (n *NS) Command(name string, args ...string) *exec.Cmd {
	// `ip netns exec` execs the program in place, so cmd.Process.Pid is
	// the program's own PID.
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	n.mu.Lock()
	n.cmds = append(n.cmds, cmd)
	n.mu.Unlock()
	return cmd
}

// Sysctl sets a sysctl inside the namespace, e.g.
// n.Sysctl(t, "net.ipv4.ip_forward", "1"). A key containing "/" is taken as
// a path below /proc/sys (for interface names with dots).
func (n *NS) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	rel := key
	if !strings.Contains(key, "/") {
		rel = strings.ReplaceAll(key, ".", "/")
	}
	rel = filepath.Clean(rel)
	if key == "" || filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		t.Fatalf("netns: %s: bad sysctl key %q", n.Name, key)
	}
	path := filepath.Join("/proc/sys", rel)
	// Entries under /proc/sys/net belong to the network namespace of the
	// thread that opens them, so the write happens inside Do.
	err := n.Do(func() error { return os.WriteFile(path, []byte(value), 0) })
	if err != nil {
		t.Fatalf("netns: %s: sysctl %s=%s: %v", n.Name, key, value, err)
	}
}

// AddRoute adds a route inside the namespace: dst is "default" or a
// documentation prefix, via a documentation address of a neighbour.
func (n *NS) AddRoute(t testing.TB, dst, via string) {
	t.Helper()
	gw, err := netip.ParseAddr(via)
	if err != nil {
		t.Fatalf("netns: %s: route via %q: %v", n.Name, via, err)
	}
	if !isDocumentation(netip.PrefixFrom(gw, gw.BitLen())) {
		t.Fatalf("netns: %s: route via %s: %v", n.Name, via, errNotDocumentation)
	}
	if dst != "default" {
		p, err := netip.ParsePrefix(dst)
		if err != nil {
			t.Fatalf("netns: %s: route to %q: %v", n.Name, dst, err)
		}
		if !isDocumentation(p) {
			t.Fatalf("netns: %s: route to %s: %v", n.Name, dst, errNotDocumentation)
		}
		if p.Addr().Is4() != gw.Is4() {
			t.Fatalf("netns: %s: route to %s via %s: address families differ", n.Name, dst, via)
		}
	}
	family := "-4"
	if !gw.Is4() {
		family = "-6"
	}
	if out, err := run("ip", "-n", n.Name, family, "route", "add", dst, "via", via); err != nil {
		t.Fatalf("netns: %s: route add %s via %s: %v: %s", n.Name, dst, via, err, out)
	}
}

// Veth names the two ends of a veth pair: A inside the first namespace given
// to Connect, B inside the second.
type Veth struct{ A, B string }

// Connect joins a and b with a veth pair, assigns the addresses (prefix form,
// documentation ranges only, e.g. "192.0.2.1/24", "2001:db8::1/64"; IPv6
// without DAD), sets both ends up and returns once the link carries traffic
// and no address is tentative. The pair never exists in the machine's own
// namespace and disappears with either namespace.
func Connect(t testing.TB, a *NS, aAddrs []string, b *NS, bAddrs []string) Veth {
	t.Helper()
	aPrefixes := parseAddrs(t, a, aAddrs)
	bPrefixes := parseAddrs(t, b, bAddrs)

	// "gh" + 6 hex + end + role: at most 15 bytes (IFNAMSIZ-1). The end
	// letter keeps the names apart when a and b share a role.
	id := randomHex(3)
	v := Veth{A: "gh" + id + "a" + sanitise(a.role, 6), B: "gh" + id + "b" + sanitise(b.role, 6)}
	if out, err := run("ip", "-n", a.Name, "link", "add", v.A, "type", "veth", "peer", "name", v.B, "netns", b.Name); err != nil {
		t.Fatalf("netns: veth %s (%s) - %s (%s): %v: %s", v.A, a.Name, v.B, b.Name, err, out)
	}
	for _, end := range []struct {
		ns       *NS
		dev      string
		prefixes []netip.Prefix
	}{{a, v.A, aPrefixes}, {b, v.B, bPrefixes}} {
		for _, p := range end.prefixes {
			args := []string{"-n", end.ns.Name, "addr", "add", p.String(), "dev", end.dev}
			if p.Addr().Is6() {
				args = append(args, "nodad")
			}
			if out, err := run("ip", args...); err != nil {
				t.Fatalf("netns: %s: addr add %s dev %s: %v: %s", end.ns.Name, p, end.dev, err, out)
			}
		}
		if out, err := run("ip", "-n", end.ns.Name, "link", "set", "dev", end.dev, "up"); err != nil {
			t.Fatalf("netns: %s: set %s up: %v: %s", end.ns.Name, end.dev, err, out)
		}
	}
	waitReady(t, a, v.A)
	waitReady(t, b, v.B)
	return v
}

// waitReady waits until dev is operationally up with its queueing discipline
// attached (before that the kernel silently drops what is sent) and has no
// tentative IPv6 address.
func waitReady(t testing.TB, n *NS, dev string) {
	t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for {
		link, err := run("ip", "-n", n.Name, "-o", "link", "show", "dev", dev)
		if err != nil {
			t.Fatalf("netns: %s: show %s: %v: %s", n.Name, dev, err, link)
		}
		tentative, err := run("ip", "-n", n.Name, "-6", "-o", "addr", "show", "dev", dev, "tentative")
		if err != nil {
			t.Fatalf("netns: %s: show addresses of %s: %v: %s", n.Name, dev, err, tentative)
		}
		if strings.Contains(link, "state UP") && !strings.Contains(link, "qdisc noop") && strings.TrimSpace(tentative) == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("netns: %s: %s not ready after %v: link %q, tentative %q", n.Name, dev, settleTimeout, link, tentative)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Do runs fn on a locked OS thread switched into the namespace and switches
// back afterwards. Sockets and netlink connections fn opens stay in the
// namespace; goroutines fn starts run elsewhere and are NOT in it. If the
// thread cannot be switched back, it stays locked and dies with the
// goroutine instead of serving other goroutines in the wrong namespace.
func (n *NS) Do(fn func() error) (err error) {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current network namespace: %w", err)
	}
	defer unix.Close(orig)
	target, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open %s: %w", n.Path(), err)
	}
	err = unix.Setns(target, unix.CLONE_NEWNET)
	unix.Close(target)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", n.Name, err)
	}
	// Deferred so that the thread is switched back even if fn panics.
	defer func() {
		if rerr := unix.Setns(orig, unix.CLONE_NEWNET); rerr != nil {
			err = errors.Join(err, fmt.Errorf("%w: %w", errRestore, rerr))
			return // keep the thread locked: it must not be reused
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// Listen returns a listener (net.Listen semantics) whose socket lives in the
// namespace. It is closed on cleanup; closing it earlier is fine.
func (n *NS) Listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("netns: %s: listen %s %s: %v", n.Name, network, addr, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// DialContext connects from inside the namespace, from laddr if it is not
// empty. For TCP and UDP both addresses must be IP literals: resolving names
// could start goroutines outside the namespace. The caller closes the
// connection; until then it keeps the namespace alive after deletion.
func (n *NS) DialContext(ctx context.Context, network, laddr, raddr string) (net.Conn, error) {
	var d net.Dialer
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
		if err := checkLiteral(raddr); err != nil {
			return nil, fmt.Errorf("dial %s %s: %w", network, raddr, err)
		}
		if laddr != "" {
			if err := checkLiteral(laddr); err != nil {
				return nil, fmt.Errorf("dial %s from %s: %w", network, laddr, err)
			}
			var err error
			if strings.HasPrefix(network, "tcp") {
				d.LocalAddr, err = net.ResolveTCPAddr(network, laddr)
			} else {
				d.LocalAddr, err = net.ResolveUDPAddr(network, laddr)
			}
			if err != nil {
				return nil, fmt.Errorf("dial %s from %s: %w", network, laddr, err)
			}
		}
	default:
		if laddr != "" {
			return nil, fmt.Errorf("dial %s: local address only supported for tcp and udp", network)
		}
	}
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, raddr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", n.Name, err)
	}
	return c, nil
}

// cleanup kills what the test started in the namespace, then deletes it.
// It logs problems instead of failing: it runs after the test's verdict.
func (n *NS) cleanup(t testing.TB) {
	defer func() {
		if r := recover(); r != nil {
			t.Logf("netns: %s: cleanup panicked: %v", n.Name, r)
		}
	}()
	n.mu.Lock()
	cmds := n.cmds
	n.cmds = nil
	n.mu.Unlock()
	for _, cmd := range cmds {
		p := cmd.Process
		if p == nil {
			continue // never started
		}
		if err := p.Kill(); err != nil {
			if !errors.Is(err, os.ErrProcessDone) {
				t.Logf("netns: %s: kill pid %d: %v", n.Name, p.Pid, err)
			}
			continue
		}
		// Reap it; the error is expected when the test waits concurrently.
		_, _ = p.Wait()
	}

	// Whatever is left in the namespace (children of the commands above,
	// programs started with Exec that daemonised) was started by this test.
	n.killRemaining(t)

	if out, err := run("ip", "netns", "delete", n.Name); err != nil {
		t.Logf("netns: %s: delete: %v: %s", n.Name, err, out)
	}
}

// killRemaining sends SIGKILL to every process still in the namespace and
// waits until none is left.
func (n *NS) killRemaining(t testing.TB) {
	deadline := time.Now().Add(settleTimeout)
	self := os.Getpid()
	for {
		pids, err := n.pids()
		if err != nil {
			t.Logf("netns: %s: list processes: %v", n.Name, err)
			return
		}
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Logf("netns: %s: processes still running after %v: %v", n.Name, settleTimeout, pids)
			return
		}
		for _, pid := range pids {
			if pid == self {
				// A thread stuck by a failed Do; killing it would kill the test.
				continue
			}
			if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
				t.Logf("netns: %s: kill pid %d: %v", n.Name, pid, err)
			}
		}
		if len(pids) == 1 && pids[0] == self {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pids lists the processes whose network namespace is this one.
func (n *NS) pids() ([]int, error) {
	out, err := run("ip", "netns", "pids", n.Name)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, out)
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parse pid %q: %w", f, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

func parseAddrs(t testing.TB, n *NS, addrs []string) []netip.Prefix {
	t.Helper()
	prefixes := make([]netip.Prefix, 0, len(addrs))
	for _, s := range addrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			t.Fatalf("netns: %s: address %q: want prefix form like 192.0.2.1/24: %v", n.Name, s, err)
		}
		if !isDocumentation(p) {
			t.Fatalf("netns: %s: address %s: %v", n.Name, s, errNotDocumentation)
		}
		prefixes = append(prefixes, p)
	}
	return prefixes
}

// isDocumentation reports whether every address of p's network lies in a
// documentation range.
func isDocumentation(p netip.Prefix) bool {
	for _, d := range documentation {
		if d.Bits() <= p.Bits() && d.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

func checkLiteral(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if host == "" {
		return nil // unspecified, as in ":0"
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("%w: %q", errNotLiteral, host)
	}
	return nil
}

// run executes a command and returns its combined output.
func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// sanitise keeps lowercase letters and digits of role, at most max of them.
func sanitise(role string, max int) string {
	var b strings.Builder
	for _, r := range strings.ToLower(role) {
		if b.Len() >= max {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "ns"
	}
	return b.String()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}
