package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSanitise(t *testing.T) {
	t.Parallel()
	tests := []struct {
		role string
		max  int
		want string
	}{
		{"cloud", 12, "cloud"},
		{"Gate-Way_1", 12, "gateway1"},
		{"averyveryverylongrole", 6, "averyv"},
		{"", 6, "ns"},
		{"--", 6, "ns"},
		{"ünï", 6, "n"},
	}
	for _, tt := range tests {
		if got := sanitise(tt.role, tt.max); got != tt.want {
			t.Errorf("sanitise(%q, %d) = %q, want %q", tt.role, tt.max, got, tt.want)
		}
	}
}

func TestIsDocumentation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		prefix string
		want   bool
	}{
		{"192.0.2.1/24", true},
		{"198.51.100.7/32", true},
		{"203.0.113.0/24", true},
		{"2001:db8::1/64", true},
		{"2001:db8:ffff::/48", true},
		{"192.0.2.1/23", false}, // network reaches outside the range
		{"2001:db8::/31", false},
		{"10.0.0.1/24", false},
		{"127.0.0.1/8", false},
		{"fe80::1/64", false},
		{"::ffff:192.0.2.1/128", false},
	}
	for _, tt := range tests {
		p := mustPrefix(t, tt.prefix)
		if got := isDocumentation(p); got != tt.want {
			t.Errorf("isDocumentation(%s) = %v, want %v", tt.prefix, got, tt.want)
		}
	}
}

func TestCheckLiteral(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr    string
		wantErr bool
	}{
		{"192.0.2.1:80", false},
		{"[2001:db8::1]:443", false},
		{":0", false},
		{"localhost:80", true},
		{"example.com:443", true},
		{"192.0.2.1", true}, // no port
	}
	for _, tt := range tests {
		if err := checkLiteral(tt.addr); (err != nil) != tt.wantErr {
			t.Errorf("checkLiteral(%q) = %v, want error %v", tt.addr, err, tt.wantErr)
		}
	}
}

func TestNamesUnique(t *testing.T) {
	t.Parallel()
	RequirePriv(t)
	a, b := New(t, "same"), New(t, "same")
	if a.Name == b.Name {
		t.Fatalf("two namespaces share the name %q", a.Name)
	}
	v1 := Connect(t, a, nil, b, nil)
	v2 := Connect(t, a, nil, b, nil)
	for _, name := range []string{v1.A, v1.B, v2.A, v2.B} {
		if len(name) > 15 {
			t.Errorf("interface name %q longer than 15 bytes", name)
		}
	}
	if v1.A == v1.B || v1.A == v2.A || v1.B == v2.B {
		t.Errorf("interface names not unique: %+v %+v", v1, v2)
	}
	// The pair never appears in the test's own namespace.
	for _, name := range []string{v1.A, v1.B} {
		if _, err := net.InterfaceByName(name); err == nil {
			t.Errorf("interface %s exists in the machine's namespace", name)
		}
	}
}

func TestTCPBetweenNamespaces(t *testing.T) {
	t.Parallel()
	RequirePriv(t)
	client, server := New(t, "client"), New(t, "server")
	v := Connect(t,
		client, []string{"192.0.2.1/24", "2001:db8::1/64"},
		server, []string{"192.0.2.2/24", "2001:db8::2/64"})

	tests := []struct {
		network, listen, local string
	}{
		{"tcp4", "192.0.2.2:0", "192.0.2.1:0"},
		{"tcp6", "[2001:db8::2]:0", "[2001:db8::1]:0"},
	}
	for _, tt := range tests {
		t.Run(tt.network, func(t *testing.T) {
			t.Parallel()
			l := server.Listen(t, tt.network, tt.listen)
			accepted := make(chan net.Addr, 1)
			go func() {
				defer close(accepted)
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				accepted <- c.RemoteAddr()
				io.Copy(c, c) // echo until the client half-closes
			}()

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := client.DialContext(ctx, tt.network, tt.local, l.Addr().String())
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			payload := "hello from " + tt.network + " via " + v.A
			if _, err := io.WriteString(c, payload); err != nil {
				t.Fatalf("write: %v", err)
			}
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatalf("close write: %v", err)
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if string(got) != payload {
				t.Errorf("echo = %q, want %q", got, payload)
			}
			wantHost, _, _ := net.SplitHostPort(tt.local)
			remote := (<-accepted).(*net.TCPAddr)
			if remote.IP.String() != strings.Trim(wantHost, "[]") {
				t.Errorf("server saw peer %s, want %s", remote, wantHost)
			}
		})
	}
}

func TestDialRejectsNames(t *testing.T) {
	t.Parallel()
	RequirePriv(t)
	n := New(t, "dial")
	_, err := n.DialContext(context.Background(), "tcp", "", "localhost:80")
	if !errors.Is(err, errNotLiteral) {
		t.Fatalf("dial by name: err = %v, want %v", err, errNotLiteral)
	}
}

func TestDoSwitchesAndRestores(t *testing.T) {
	t.Parallel()
	RequirePriv(t)
	a, b := New(t, "doa"), New(t, "dob")
	v := Connect(t, a, []string{"198.51.100.1/24"}, b, []string{"198.51.100.2/24"})

	before := threadNetNS(t)
	err := a.Do(func() error {
		if got := threadNetNS(t); got == before {
			return fmt.Errorf("still in the original namespace %s", got)
		}
		if _, err := net.InterfaceByName(v.A); err != nil {
			return fmt.Errorf("own end %s not visible: %w", v.A, err)
		}
		if _, err := net.InterfaceByName(v.B); err == nil {
			return fmt.Errorf("peer end %s visible in the wrong namespace", v.B)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if after := threadNetNS(t); after != before {
		t.Errorf("namespace after Do = %s, want %s", after, before)
	}

	want := errors.New("from fn")
	if err := a.Do(func() error { return want }); !errors.Is(err, want) {
		t.Errorf("Do returned %v, want the error of fn", err)
	}
}

func TestSysctl(t *testing.T) {
	t.Parallel()
	RequirePriv(t)
	n := New(t, "sysctl")
	n.Sysctl(t, "net.ipv4.ip_forward", "1")
	if got := strings.TrimSpace(n.Exec(t, "cat", "/proc/sys/net/ipv4/ip_forward")); got != "1" {
		t.Errorf("ip_forward inside = %q, want 1", got)
	}
	// New disables DAD inside the namespace only.
	if got := strings.TrimSpace(n.Exec(t, "cat", "/proc/sys/net/ipv6/conf/default/accept_dad")); got != "0" {
		t.Errorf("accept_dad inside = %q, want 0", got)
	}
}

func TestAddRoute(t *testing.T) {
	t.Parallel()
	RequirePriv(t)
	a, b := New(t, "routea"), New(t, "routeb")
	Connect(t, a, []string{"203.0.113.1/24", "2001:db8:1::1/64"}, b, []string{"203.0.113.2/24", "2001:db8:1::2/64"})
	a.AddRoute(t, "198.51.100.0/24", "203.0.113.2")
	a.AddRoute(t, "2001:db8:2::/48", "2001:db8:1::2")
	a.AddRoute(t, "default", "203.0.113.2")
	out := a.Exec(t, "ip", "route", "show")
	for _, want := range []string{"198.51.100.0/24 via 203.0.113.2", "default via 203.0.113.2"} {
		if !strings.Contains(out, want) {
			t.Errorf("routes %q lack %q", out, want)
		}
	}
	if out := a.Exec(t, "ip", "-6", "route", "show"); !strings.Contains(out, "2001:db8:2::/48 via 2001:db8:1::2") {
		t.Errorf("IPv6 routes %q lack the added one", out)
	}
}

// TestCleanup checks, after a subtest has finished, that its namespace is
// gone and that the processes it started (directly, and one level removed)
// are dead.
func TestCleanup(t *testing.T) {
	t.Parallel()
	RequirePriv(t)
	var name string
	var direct, grandchild int
	t.Run("use", func(t *testing.T) {
		n := New(t, "cleanup")
		Connect(t, n, []string{"192.0.2.1/24"}, New(t, "peer"), []string{"192.0.2.2/24"})
		name = n.Name
		direct, grandchild = startProcesses(t, n)
	})
	assertGone(t, name, direct, grandchild)
}

// TestCleanupAfterFailure runs helper tests that fail or panic in a child
// test binary and checks that their cleanup still ran.
func TestCleanupAfterFailure(t *testing.T) {
	t.Parallel()
	RequirePriv(t)
	for _, mode := range []string{"fatal", "panic"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperFailingTest$", "-test.v")
			cmd.Env = append(os.Environ(), helperEnv+"="+mode)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("helper test passed, want failure:\n%s", out)
			}
			var name string
			var direct, grandchild int
			for _, line := range strings.Split(string(out), "\n") {
				if i := strings.Index(line, "HELPER "); i >= 0 {
					fmt.Sscanf(line[i:], "HELPER %s %d %d", &name, &direct, &grandchild)
				}
			}
			if name == "" || direct == 0 || grandchild == 0 {
				t.Fatalf("helper output lacks its report:\n%s", out)
			}
			assertGone(t, name, direct, grandchild)
		})
	}
}

const helperEnv = "GATEHOUSE_NETNS_HELPER"

// TestHelperFailingTest is run by TestCleanupAfterFailure in a child process.
func TestHelperFailingTest(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper for TestCleanupAfterFailure")
	}
	n := New(t, "failing")
	direct, grandchild := startProcesses(t, n)
	fmt.Printf("HELPER %s %d %d\n", n.Name, direct, grandchild)
	switch mode {
	case "panic":
		panic("helper panics on purpose")
	default:
		t.Fatal("helper fails on purpose")
	}
}

// startProcesses starts a shell through Command that starts a sleep of its
// own, and returns both PIDs once they run.
func startProcesses(t *testing.T, n *NS) (direct, grandchild int) {
	t.Helper()
	cmd := n.Command("sh", "-c", "sleep 60 & echo $!; wait")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start: %v", err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("read grandchild pid: %v", err)
	}
	grandchild, err = strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("grandchild pid %q: %v", line, err)
	}
	return cmd.Process.Pid, grandchild
}

func assertGone(t *testing.T, name string, pids ...int) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			t.Errorf("namespace %s still listed after cleanup", name)
		}
	}
	if _, err := os.Stat(filepath.Join(runDir, name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s/%s still present after cleanup (stat: %v)", runDir, name, err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("pid %d still running after cleanup", pid)
		}
	}
}

// alive reports whether pid exists and is not a zombie (a killed process
// that nobody has reaped yet is dead for our purposes).
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses, which may contain
	// spaces.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(s[i+1:], " Z") && !strings.HasPrefix(s[i+1:], " X")
}

// threadNetNS identifies the network namespace of the calling thread. Only
// meaningful on a locked thread (as inside Do) or for comparison right after.
func threadNetNS(t testing.TB) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatalf("stat own network namespace: %v", err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
