package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// TestTeardownOverAdminAPI: a tenant admin and a global publisher are
// refused a teardown over the admin socket, and so is a global admin that
// does not confirm; each refusal is audited and the filters stay. Asked by
// root with --yes, the daemon lifts its XDP filter (detached, pins gone)
// and its nftables table, audits it, answers what it removed, and exits 0:
// the intruder's SYN then reaches the host.
func TestTeardownOverAdminAPI(t *testing.T) {
	tp := newTopology(t)
	curl := netns.RequireTool(t, "curl", "curl")
	// Grants to unix users open the socket to them, which takes a restart.
	if err := tp.d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-tp.d.exited
	cfg, err := os.ReadFile(tp.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg = append(cfg, `
access:
  grants:
    - {role: admin, scope: "tenant:acme", users: [nobody]}
    - {role: publisher, scope: global, users: [daemon]}
`...)
	if err := os.WriteFile(tp.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Dir(tp.dir), tp.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tp.start(t)
	sock := filepath.Join(tp.dir, "admin.sock")

	stillFiltered := func(when string) {
		t.Helper()
		if link := tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B); !strings.Contains(link, "xdp") {
			t.Fatalf("%s: XDP detached:\n%s", when, link)
		}
		tp.dmz.Exec(t, "nft", "list", "table", "inet", "gatehouse")
	}
	for _, who := range []struct {
		uid  uint32
		want string
	}{
		{65534, "refused: teardown on global needs role admin at global scope; uid 65534 (nobody) has admin at tenant:acme"},
		{1, "refused: teardown on global needs role admin at global scope; uid 1 (daemon) has publisher at global"},
	} {
		cmd := exec.Command(curl, "-sS", "--max-time", "10", "-X", "POST", "-w", "\n%{http_code}", "--unix-socket", sock, "http://gatehouse/teardown?confirm=yes")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: who.uid, Gid: who.uid}}
		out, err := cmd.Output()
		if err != nil || !strings.Contains(string(out), who.want) || !strings.HasSuffix(string(out), "\n403") {
			t.Errorf("teardown asked by uid %d: %v\n%s", who.uid, err, out)
		}
	}
	stillFiltered("after refused teardowns")
	out, err := exec.Command(binary(t), "teardown", "--daemon", "-c", tp.config).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "needs --yes") {
		t.Errorf("teardown --daemon without --yes: %v\n%s", err, out)
	}
	out, err = exec.Command(curl, "-sS", "-X", "POST", "-w", "\n%{http_code}", "--unix-socket", sock, "http://gatehouse/teardown").Output()
	if err != nil || !strings.Contains(string(out), "confirm=yes") || !strings.HasSuffix(string(out), "\n400") {
		t.Errorf("teardown without confirm=yes: %v\n%s", err, out)
	}
	stillFiltered("after unconfirmed teardowns")
	if got := tp.probe(t, intruderAddr, gateV4Alt); got != "dropped" {
		t.Errorf("intruder before the teardown: %s, want dropped", got)
	}

	out, err = exec.Command(binary(t), "teardown", "--daemon", "--yes", "-c", tp.config).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "removed the XDP filter on "+tp.outside.B) || !strings.Contains(string(out), "table inet gatehouse and stopped") {
		t.Fatalf("teardown --daemon --yes: %v\n%s\ndaemon:\n%s", err, out, tp.d.out.String())
	}
	select {
	case <-tp.d.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("the daemon did not exit after its teardown:\n%s", tp.d.out.String())
	}
	if tp.d.exitErr != nil {
		t.Errorf("daemon exit after its teardown: %v\n%s", tp.d.exitErr, tp.d.out.String())
	}
	if tables := tp.dmz.Exec(t, "nft", "list", "tables"); strings.Contains(tables, "gatehouse") {
		t.Errorf("tables after the teardown:\n%s", tables)
	}
	if link := tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B); strings.Contains(link, "xdp") {
		t.Errorf("XDP still attached after the teardown:\n%s", link)
	}
	if entries, _ := os.ReadDir(tp.pinDir); len(entries) != 0 {
		t.Errorf("pins left after the teardown: %v", entries)
	}
	if got := tp.probe(t, intruderAddr, gateV4Alt); got != "refused" {
		t.Errorf("intruder after the teardown: %s, want refused (nothing filters, nothing listens)", got)
	}

	// The audit log: both refusals with who and why, the unconfirmed
	// request, and the teardown with what it removed, each action's
	// intent line before its result.
	f, err := os.Open(filepath.Join(tp.dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		if e["action"] == "teardown" {
			lines = append(lines, fmt.Sprintf("%v %v %v %v %v", e["user"], e["role"], e["scope"], e["result"], e["args"]))
		}
	}
	want := []string{
		"nobody admin tenant:acme refused <nil>",
		"daemon publisher global refused <nil>",
		"root admin global intent <nil>",
		"root admin global error <nil>",
		"root admin global intent <nil>",
		"root admin global ok map[removed:[the XDP filter on " + tp.outside.B + " (pinned under " + tp.pinDir + ") table inet gatehouse]]",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("teardown in the audit log:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}
