package proxy_test

import (
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// lowerFileLimit sets this process's RLIMIT_NOFILE to what is open now
// plus room, and restores it when the test ends. The tests of this
// package run one at a time, so nothing else shares the lowered limit.
func lowerFileLimit(t *testing.T, room int) int {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	limit := len(ents) + room
	if uint64(limit) > old.Cur {
		t.Fatalf("the descriptor limit %d is too low for this test", old.Cur)
	}
	lowered := syscall.Rlimit{Cur: uint64(limit), Max: old.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lowered); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
			t.Errorf("restore RLIMIT_NOFILE: %v", err)
		}
	})
	return limit
}

// TestDescriptorReserve: with every descriptor the clients may take taken,
// the proxy closes new connections at once, says so once, and the
// control plane can still open its files.
func TestDescriptorReserve(t *testing.T) {
	echo := lineEcho(t)
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo})
	h := newHarness(t, testLimits(), raw)
	lowerFileLimit(t, 500)

	// Each session holds four descriptors of this process: the client,
	// the proxy's two, and the echo backend's.
	var sessions []*session
	for {
		s, err := h.dialSession(h.pki.acme, "raw")
		if err != nil {
			break
		}
		sessions = append(sessions, s)
		if len(sessions) > 500 {
			t.Fatal("the proxy never stopped taking connections")
		}
	}
	if len(sessions) < 50 {
		t.Fatalf("only %d sessions before the reserve: the reserve is larger than it should be", len(sessions))
	}
	for range 5 {
		if _, err := h.dialSession(h.pki.acme, "raw"); err == nil {
			t.Fatal("a connection was served within the reserve")
		}
	}
	if v := h.metric("gatehouse_proxy_connections_refused_total", "raw", "descriptors"); v != 6 {
		t.Errorf("refusals for descriptors %v, want 6", v)
	}
	// The control plane: a certificate reload, an nftables batch, a feed
	// download need a few descriptors each.
	var files []*os.File
	for i := range 32 {
		f, err := os.Open("/proc/self/status")
		if err != nil {
			t.Fatalf("control-plane file %d could not be opened while clients hold everything they may: %v", i, err)
		}
		files = append(files, f)
	}
	for _, f := range files {
		f.Close()
	}
	if n := strings.Count(h.logs.String(), "descriptor reserve reached"); n != 1 {
		t.Errorf("%d lines say the reserve was reached, want 1:\n%s", n, h.logs.String())
	}
	// Sessions ending free the reserve again.
	for _, s := range sessions[:20] {
		s.c.Close()
	}
	if !waitFor(func() bool { _, err := h.dialSession(h.pki.acme, "raw"); return err == nil }) {
		t.Error("no connection served after sessions freed their descriptors")
	}
	if !strings.Contains(h.logs.String(), "descriptor reserve left") {
		t.Error("no line saying the reserve was left")
	}
	for i, s := range sessions[20:] {
		if err := s.ping(); err != nil {
			t.Errorf("session %d lost: %v", 20+i, err)
		}
	}
}

// TestAcceptErrorsRateLimited: when accept itself fails (every descriptor
// taken, here by files), the error is logged at most once in two seconds,
// with the count of lines held back, not once per retry.
func TestAcceptErrorsRateLimited(t *testing.T) {
	echo := lineEcho(t)
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo})
	h := newHarness(t, testLimits(), raw)
	lowerFileLimit(t, 100)
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for {
		f, err := os.Open("/dev/null")
		if err != nil {
			break
		}
		files = append(files, f)
	}
	// One descriptor for the client's socket; none for the proxy's accept.
	files[len(files)-1].Close()
	files = files[:len(files)-1]
	c, err := net.Dial("tcp", h.addr("raw"))
	if err != nil {
		t.Fatalf("dial with the last descriptor: %v", err)
	}
	defer c.Close()
	time.Sleep(3500 * time.Millisecond) // the accept loop retries meanwhile: 10 times or so
	logs := h.logs.String()
	for _, f := range files {
		f.Close()
	}
	files = nil
	n := strings.Count(logs, "accept failed")
	if n == 0 {
		t.Fatalf("no accept error logged:\n%s", logs)
	}
	if n > 3 {
		t.Errorf("%d accept error lines in 3.5 s, want at most 3:\n%s", n, logs)
	}
	if !strings.Contains(logs, "similar_lines_suppressed=") {
		t.Errorf("no count of the lines held back:\n%s", logs)
	}
}
