package test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// TestDemoCheck runs the demo (test/demo, what `make demo` shows) once
// with --check: every step must pass with a real client, and afterwards
// nothing the demo created may be left: namespaces, the bpffs mount, the
// /etc/netns entries and the work directory.
func TestDemoCheck(t *testing.T) {
	runDemoCheck(t, nil, []string{
		"the kernel filters are in place",
		"reaches its HTTPS backend (IPv4)",
		"reaches its HTTPS backend over IPv6",
		"without a client certificate is refused at the TLS handshake",
		"the intruder's connection is dropped by XDP",
		"urn:acme:GetOrder is allowed",
		"urn:acme:DeleteOrder is refused by gatehouse with a SOAP Fault",
		"a TN3270 screen is read through the proxy with s3270",
		"the intruder's port scan gets it blocked",
	})
}

// TestDemoConnectorCheck runs `demo --connector --check` (what `make
// demo-connector` shows): a site whose firewall lets no new connection in
// serves its tenant through gateway → tunnel → connector with curl and
// s3270, a scan from the cloud side finds nothing open, both daemons'
// status lists the tunnels, and nothing is left behind.
func TestDemoConnectorCheck(t *testing.T) {
	runDemoCheck(t, []string{"--connector"}, []string{
		"the gateway holds 4 tunnels of tenant acme, each opened from inside",
		"reaches its internal HTTPS backend through the tunnel",
		"refused at the gateway's TLS handshake",
		"urn:acme:GetOrder is allowed through the tunnel",
		"urn:acme:DeleteOrder is refused by the connector with a SOAP Fault",
		"a TN3270 screen is read through the tunnel with s3270",
		"a port scan of the internal network from the cloud side finds nothing open",
		"`gatehouse status` shows the tunnels on both sides",
	})
}

// TestDemoHACheck runs `demo --ha --check` (what `make demo-ha` shows):
// three gatehouse nodes behind a BIRD router with ECMP serve the tenant in
// turn, the intruder gets nothing from any of them, a node killed with
// kill -9 and one drained with SIGTERM leave the router's route while a
// curl loop is served on by the others, and nothing is left behind.
func TestDemoHACheck(t *testing.T) {
	netns.RequireTool(t, "bird", "bird2")
	runDemoCheck(t, []string{"--ha"}, []string{
		"each node announced 203.0.113.100/32 once ready",
		"tenant requests from the cloud spread over the nodes",
		"the intruder gets nothing from the service address or any node",
		"kill -9 of n1: the router drops its route",
		"SIGTERM to n2: withdrawn first, not ready, still serving during withdraw_wait",
		"`gatehouse status` on n3 shows its BGP session up",
	})
}

// runDemoCheck runs the demo with --check and args: it must exit 0, pass
// every step named in want and fail none, and leave nothing behind.
func runDemoCheck(t *testing.T, args, want []string) {
	t.Helper()
	netns.RequirePriv(t)
	netns.RequireTool(t, "s3270", "s3270")
	demo := filepath.Join(t.TempDir(), "demo")
	if out, err := exec.Command("go", "build", "-o", demo, "./demo").CombinedOutput(); err != nil {
		t.Fatalf("go build ./demo: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, demo, append([]string{"--check", "--gatehouse", binary(t)}, args...)...)
	// On timeout the demo is interrupted, not killed, so it still removes
	// what it created; WaitDelay bounds how long that may take.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = 30 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	text := out.String()
	if err != nil {
		t.Errorf("demo --check: %v\n%s", err, text)
	}

	var steps, failed []string
	for _, l := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(l, "  ✔ "):
			steps = append(steps, l)
		case strings.HasPrefix(l, "  ✘ "):
			failed = append(failed, l)
		}
	}
	if len(failed) > 0 {
		t.Errorf("failed steps:\n%s", strings.Join(failed, "\n"))
	}
	for _, want := range want {
		found := false
		for _, s := range steps {
			found = found || strings.Contains(s, want)
		}
		if !found {
			t.Errorf("no passed step %q in the output:\n%s", want, text)
		}
	}

	// Nothing left behind.
	m := regexp.MustCompile(`ghdemo-[0-9a-f]{4}`).FindString(text)
	if m == "" {
		t.Fatalf("demo output names no namespace:\n%s", text)
	}
	if list, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(list), m) {
		t.Errorf("namespaces %s-* left behind:\n%s", m, list)
	}
	if entries, _ := filepath.Glob("/etc/netns/" + m + "-*"); len(entries) > 0 {
		t.Errorf("/etc/netns entries left behind: %v", entries)
	}
	if dir := regexp.MustCompile(`work directory (\S+)`).FindStringSubmatch(text); dir == nil {
		t.Errorf("demo output names no work directory")
	} else {
		if _, err := os.Stat(dir[1]); err == nil {
			t.Errorf("work directory %s left behind", dir[1])
		}
		if mounts, _ := os.ReadFile("/proc/self/mounts"); strings.Contains(string(mounts), dir[1]) {
			t.Errorf("bpffs under %s still mounted", dir[1])
		}
	}
}
