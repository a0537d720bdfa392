package daemon

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// unauditedActions are the state-changing requests, each with what it
// must not have done when refused.
var unauditedActions = []string{
	"/sessions/kill?scope=tenant:acme",
	"/sessions/drain?scope=tenant:acme&grace=1s",
	"/reload",
	"/feeds/refresh?feed=lab",
	"/feeds/accept?feed=lab",
	"/teardown?confirm=yes",
}

// checkFailClosed asks every action of a global admin while the audit log
// cannot be written: each is refused 503 saying so, no session is cut,
// no reload happens, the daemon does not tear down; reads still answer.
func checkFailClosed(t *testing.T, l *adminLab) {
	t.Helper()
	ops := l.client(l.certs["ops-admin"])
	gen := l.d.current.Load().Generation
	before := testutil.ToFloat64(l.d.m.adminRequests.WithLabelValues("sessions_kill", "unaudited"))
	for _, path := range unauditedActions {
		code, body, err := l.do(t, ops, "POST", path)
		if err != nil || code != 503 || !strings.Contains(body, "audit log not writable") {
			t.Errorf("POST %s with the audit log unwritable: %d %v %q, want 503 audit log not writable", path, code, err, body)
		}
	}
	l.cut.mu.Lock()
	if len(l.cut.killed) != 0 || len(l.cut.drains) != 0 {
		t.Errorf("sessions cut without an audit line: killed %v drained %v", l.cut.killed, l.cut.drains)
	}
	l.cut.mu.Unlock()
	if g := l.d.current.Load().Generation; g != gen {
		t.Errorf("generation %d after an unaudited reload, want %d", g, gen)
	}
	if l.d.tearingDown() {
		t.Error("teardown started without an audit line")
	}
	if got := testutil.ToFloat64(l.d.m.adminRequests.WithLabelValues("sessions_kill", "unaudited")) - before; got != 1 {
		t.Errorf("gatehouse_admin_requests_total{action=sessions_kill,result=unaudited} rose by %v, want 1", got)
	}
	// Reads are not actions: they answer, their line is logged as lost.
	if code, body, err := l.do(t, ops, "GET", "/status"); err != nil || code != 200 {
		t.Errorf("status with the audit log unwritable: %d %v %s", code, err, body)
	}
}

// auditLines reads an audit log back; every line must be whole JSON.
func auditLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Errorf("audit line %q is not whole: %v", sc.Text(), err)
			continue
		}
		out = append(out, m)
	}
	return out
}

// TestActionRefusedWhenAuditPathLost: the audit log's path turns into a
// directory at runtime (after a rotation, say): every action is refused
// and takes no effect; once the path is writable again the next action
// runs, its intent line synced before it and its result line after.
func TestActionRefusedWhenAuditPathLost(t *testing.T) {
	l := startAdminLab(t)
	path := filepath.Join(l.dir, "audit.log")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	checkFailClosed(t, l)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	ops := l.client(l.certs["ops-admin"])
	if code, body, err := l.do(t, ops, "POST", "/sessions/kill?scope=tenant:acme"); err != nil || code != 200 {
		t.Fatalf("kill with the audit log back: %d %v %s", code, err, body)
	}
	var results []string
	for _, e := range auditLines(t, path) {
		if e["action"] == "sessions_kill" {
			results = append(results, e["result"].(string))
		}
	}
	if strings.Join(results, " ") != "intent ok" {
		t.Errorf("audit lines of the kill: %v, want intent then ok", results)
	}
}

// TestActionRefusedWhenAuditDiskFull: the audit log is on a small tmpfs
// that fills up at runtime: writes fail with ENOSPC, each action is
// refused and takes no effect, and the log keeps only whole lines.
func TestActionRefusedWhenAuditDiskFull(t *testing.T) {
	netns.RequirePriv(t)
	fs := filepath.Join(t.TempDir(), "auditfs")
	if err := os.Mkdir(fs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", fs, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, "size=256k,mode=0700"); err != nil {
		t.Fatalf("mount a tmpfs for the audit log: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(fs, syscall.MNT_DETACH) })
	path := filepath.Join(fs, "audit.log")
	l := startAdminLabWith(t, fmt.Sprintf("  audit_log: %s\n", path))
	ops := l.client(l.certs["ops-admin"])
	if code, body, err := l.do(t, ops, "GET", "/status"); err != nil || code != 200 {
		t.Fatalf("status: %d %v %s", code, err, body)
	}
	// Fill the file system: a filler file until ENOSPC.
	filler, err := os.Create(filepath.Join(fs, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for i := 0; ; i++ {
		if _, err := filler.Write(chunk[:1+i%4096]); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the tmpfs: %v", err)
			}
			break
		}
		if i > 1<<16 {
			t.Fatal("the tmpfs never filled")
		}
	}
	filler.Close()
	// The audit log's last page may still take a few lines: kills go on
	// until one is refused, each that ran audited before and after.
	ran := 0
	for ; ; ran++ {
		code, body, err := l.do(t, ops, "POST", "/sessions/kill?scope=tenant:acme")
		if err != nil || code == 503 {
			break
		}
		if code != 200 || ran > 100 {
			t.Fatalf("kill on a full file system: %d %v %s", code, err, body)
		}
	}
	// Each kill that ran has its intent line; the result line of the last
	// may be the one the disk had no room for.
	lines := map[string]int{}
	for _, e := range auditLines(t, path) {
		if e["action"] == "sessions_kill" {
			lines[e["result"].(string)]++
		}
	}
	if lines["intent"] != ran || lines["ok"] < ran-1 || lines["ok"] > ran {
		t.Errorf("audit lines of %d kills that ran: %v", ran, lines)
	}
	l.cut.mu.Lock()
	if len(l.cut.killed) != ran {
		t.Errorf("%d kills ran, %d answered 200", len(l.cut.killed), ran)
	}
	l.cut.killed = nil
	l.cut.mu.Unlock()
	checkFailClosed(t, l)
	if n := len(auditLines(t, path)); n == 0 {
		t.Error("no audit line at all")
	}
}
