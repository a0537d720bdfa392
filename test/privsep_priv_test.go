package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
	"github.com/gatehouse-dmz/gatehouse/internal/sandbox"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// hookBinary compiles gatehouse with the worker's test hooks (see
// internal/worker/testhooks.go), once per test binary.
var hookOnce struct {
	sync.Once
	path string
	err  error
}

func hookBinary(t *testing.T) string {
	t.Helper()
	hookOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gatehouse-hooks-")
		if err != nil {
			hookOnce.err = err
			return
		}
		hookOnce.path = filepath.Join(dir, "gatehouse")
		out, err := exec.Command("go", "build", "-tags", "gatehouse_testhooks", "-o", hookOnce.path, module+"/cmd/gatehouse").CombinedOutput()
		if err != nil {
			hookOnce.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if hookOnce.err != nil {
		t.Fatal(hookOnce.err)
	}
	return hookOnce.path
}

const privsepEnforcement = "  privsep: true\n  workers: 2\n  worker_user: " + privsepUser + "\n"

// privsepTopology is the end-to-end topology (XDP and nftables in force in
// the dmz namespace) with two workers of the hooked binary.
func privsepTopology(t *testing.T) *topology {
	t.Helper()
	return newTopologyWith(t, topologyOptions{enforcement: privsepEnforcement, bin: hookBinary(t)})
}

// workersOf reads the workers from status; the daemon runs in the dmz
// namespace, its admin socket is a file.
func workersOf(t *testing.T, tp *topology) daemon.Status {
	t.Helper()
	out, err := exec.Command(tp.bin, "status", "--json", "-c", tp.config).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Logf("status stderr: %s", ee.Stderr)
		}
		t.Fatalf("gatehouse status: %v\n%s", err, tp.d.out.String())
	}
	var st daemon.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	if st.Privsep == nil || !st.Privsep.On {
		t.Fatalf("status: privsep %+v, want on", st.Privsep)
	}
	return st
}

func workerPIDs(t *testing.T, tp *topology) []int {
	t.Helper()
	var pids []int
	for _, w := range workersOf(t, tp).Privsep.Workers {
		if w.PID == 0 {
			t.Fatalf("worker %d not running: %s", w.Index, w.Problem)
		}
		pids = append(pids, w.PID)
	}
	return pids
}

// TestPrivsepWorkerConfined: every thread of every worker shows no
// capability in any set, no_new_privs, a seccomp filter and a uid that is
// not root; and each thing the confinement is there to refuse (reading
// /etc/shadow, running a shell, creating a BPF map, opening an nftables
// netlink socket, binding a raw socket) fails inside a worker, which
// serves on afterwards.
func TestPrivsepWorkerConfined(t *testing.T) {
	tp := privsepTopology(t)
	pids := workerPIDs(t, tp)
	if len(pids) != 2 {
		t.Fatalf("workers %v, want 2", pids)
	}
	uid, gid := workerIDs(t)
	for _, pid := range pids {
		threads, err := sandbox.ReadThreads(pid)
		if err != nil {
			t.Fatal(err)
		}
		for _, th := range threads {
			for _, p := range th.Problems(uid, gid) {
				t.Errorf("worker %d: %s", pid, p)
			}
			if th.Seccomp != 2 {
				t.Errorf("worker %d thread %d: Seccomp %d, want 2 (filter)", pid, th.TID, th.Seccomp)
			}
			if th.UIDs[0] == 0 || th.UIDs[1] == 0 {
				t.Errorf("worker %d thread %d: uid %v", pid, th.TID, th.UIDs)
			}
		}
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile(fmt.Sprintf(`test hook: probes.*pid=%d results="(.*)"`, pid))
		var line []string
		tp.d.waitFor(t, "the probes' results", func() bool {
			line = re.FindStringSubmatch(tp.d.out.String())
			return line != nil
		})
		var results map[string]string
		if err := json.Unmarshal([]byte(strings.ReplaceAll(line[1], `\"`, `"`)), &results); err != nil {
			t.Fatalf("probe results %q: %v", line[1], err)
		}
		// The server key, the CAs: the enforcer handed their content over;
		// the worker may not open them.
		probes := []string{"open /etc/shadow", "exec /bin/sh", "bpf map", "netlink nftables socket", "raw socket bind"}
		for _, f := range tp.policyFiles {
			probes = append(probes, "open "+f)
		}
		for _, probe := range probes {
			r, ok := results[probe]
			if !ok || r == "ok" {
				t.Errorf("worker %d: %s: %q, want refused", pid, probe, r)
			}
		}
	}
	// Still the same workers, and they serve.
	if after := workerPIDs(t, tp); fmt.Sprint(after) != fmt.Sprint(pids) {
		t.Errorf("workers after the probes: %v, want %v (they survive)", after, pids)
	}
	for range 4 {
		if body, err := tp.get(context.Background(), cloudAddr, gateV4, tp.client); err != nil || !strings.Contains(body, "backend of acme") {
			t.Fatalf("after the probes: %q, %v", body, err)
		}
	}
}

// kernelState is what the kernel filters are: the nftables table as nft
// lists it and the XDP program on the outside interface.
func kernelState(t *testing.T, tp *topology) string {
	t.Helper()
	table := tp.dmz.Exec(t, "nft", "list", "table", "inet", "gatehouse")
	// Counters and the per-source meters (rate_, conns_) move with
	// traffic; the rules and every other set do not.
	table = regexp.MustCompile(`packets \d+ bytes \d+`).ReplaceAllString(table, "packets")
	table = regexp.MustCompile(`(?s)(set (?:rate|conns)_v[46] \{[^}]*?)\n\s*elements = \{[^}]*\}`).ReplaceAllString(table, "$1")
	link := tp.dmz.Exec(t, "ip", "-d", "link", "show", tp.outside.B)
	prog := regexp.MustCompile(`prog/xdp id (\d+)`).FindString(link)
	if prog == "" {
		t.Fatalf("no XDP program on %s:\n%s", tp.outside.B, link)
	}
	return prog + "\n" + table
}

// TestPrivsepKilledWorkerRestarts: kill -9 of a worker; the enforcer
// restarts it, new sessions are served (the sockets stayed open in the
// enforcer), the kernel filters are as they were, and a worker that sends
// a message the protocol does not have is killed and restarted too.
func TestPrivsepKilledWorkerRestarts(t *testing.T) {
	tp := privsepTopology(t)
	before := kernelState(t, tp)
	pids := workerPIDs(t, tp)
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	restarted := func(idx int, old int) func() bool {
		return func() bool {
			ws := workersOf(t, tp).Privsep.Workers
			return ws[idx].PID != 0 && ws[idx].PID != old && ws[idx].Restarts >= 1
		}
	}
	tp.d.waitFor(t, "worker 0 restarted", restarted(0, pids[0]))
	// New sessions work at once: enough of them that the kernel hands
	// some to each worker's socket.
	for i := range 8 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		body, err := tp.get(ctx, cloudAddr, gateV4, tp.client)
		cancel()
		if err != nil || !strings.Contains(body, "backend of acme") {
			t.Fatalf("session %d after the restart: %q, %v\n%s", i, body, err, tp.d.out.String())
		}
	}
	if after := kernelState(t, tp); after != before {
		t.Errorf("the kernel filters changed when a worker died:\n%s", lineDiff(before, after))
	}
	if !strings.Contains(tp.d.out.String(), "worker died: its live sessions are lost; restarting it") {
		t.Errorf("no log line for the death:\n%s", tp.d.out.String())
	}

	// A forged message from worker 1: logged, the worker killed, restarted.
	if err := syscall.Kill(pids[1], syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	tp.d.waitFor(t, "worker 1 restarted", restarted(1, pids[1]))
	if !strings.Contains(tp.d.out.String(), `worker broke the control protocol: killing it`) {
		t.Errorf("no log line for the forged message:\n%s", tp.d.out.String())
	}
	if body, err := tp.get(context.Background(), cloudAddr, gateV4, tp.client); err != nil || !strings.Contains(body, "backend of acme") {
		t.Fatalf("after the second restart: %q, %v", body, err)
	}
	if after := kernelState(t, tp); after != before {
		t.Errorf("the kernel filters changed:\n%s", lineDiff(before, after))
	}
	_ = netns.RequirePrivEnv
}

// lineDiff lists the lines of a and b that differ, by position.
func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for i := range max(len(al), len(bl)) {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			out = append(out, fmt.Sprintf("line %d: %q → %q", i+1, x, y))
		}
	}
	return strings.Join(out, "\n")
}
