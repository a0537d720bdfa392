package sandbox

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		childMain(mode)
	}
	os.Exit(m.Run())
}

// newFixture makes the directories the child works in: ro (certificate
// and key, the worker's read-only path), rw (the worker's writable path),
// outside (writable by anyone, but in neither list). Everything is owned or
// readable by the test's worker user, so that only the sandbox can refuse.
func newFixture(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gatehouse-sandbox-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(dir, 0o755))
	for _, d := range []string{"ro", "rw", "outside"} {
		must(os.Mkdir(filepath.Join(dir, d), 0o755))
		must(os.Chown(filepath.Join(dir, d), testUID, testGID))
	}
	must(os.Chmod(filepath.Join(dir, "outside"), 0o777))

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "worker.example.net"},
		DNSNames:     []string{"worker.example.net"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(err)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	must(err)
	for name, block := range map[string]*pem.Block{
		"cert.pem": {Type: "CERTIFICATE", Bytes: der},
		"key.pem":  {Type: "PRIVATE KEY", Bytes: kder},
	} {
		p := filepath.Join(dir, "ro", name)
		must(os.WriteFile(p, pem.EncodeToMemory(block), 0o400))
		must(os.Chown(p, testUID, testGID))
	}
	return dir
}

// child is a running probe child.
type child struct {
	cmd     *exec.Cmd
	stdin   interface{ Close() error }
	results map[string]string
	stderr  *strings.Builder
}

func startChild(t *testing.T, mode, dir string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, dirEnv+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, stderr: &strings.Builder{}}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	if err := json.NewDecoder(stdout).Decode(&c.results); err != nil {
		stdin.Close()
		cmd.Wait()
		t.Fatalf("child %s: no results (%v); stderr:\n%s", mode, err, c.stderr)
	}
	return c
}

// finish lets the child go and requires that it exits 0: it survived
// every refused call.
func (c *child) finish(t *testing.T) {
	t.Helper()
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child did not survive its probes: %v; stderr:\n%s", err, c.stderr)
	}
}

func checkProbes(t *testing.T, got, want map[string]string) {
	t.Helper()
	for probe, w := range want {
		if g := got[probe]; !slices.Contains(strings.Split(w, "|"), g) {
			t.Errorf("%s: got %s, want %s", probe, g, w)
		}
	}
	for probe := range got {
		if _, ok := want[probe]; !ok {
			t.Errorf("probe %q has no expectation", probe)
		}
	}
}

// TestApplyConfinesWorker applies the whole sandbox in a child running as
// root and has it try what a compromised worker would.
func TestApplyConfinesWorker(t *testing.T) {
	netns.RequirePriv(t)
	requireLandlock(t)
	dir := newFixture(t)
	c := startChild(t, "full", dir)
	checkProbes(t, c.results, map[string]string{
		"open /etc/shadow":     "EACCES",
		"read /etc/passwd":     "EACCES", // world-readable: only Landlock refuses
		"write outside":        "EACCES", // mode 0777: only Landlock refuses
		"write read-only dir":  "EACCES", // owned by the worker: only Landlock refuses
		"write read-write dir": "ok",
		"exec /bin/sh":         "EPERM",
		// cilium/ebpf opens /proc/self/mountinfo before bpf(2), which
		// Landlock refuses; the bpf(2) call itself is refused by seccomp.
		"bpf map":                  "EACCES|EPERM",
		"bpf syscall":              "EPERM",
		"netlink netfilter socket": "EPERM",
		"raw socket bind":          "EPERM",
		"packet socket":            "EPERM",
		"unshare":                  "EPERM",
		"setuid 0":                 "EPERM",
		"kill 1":                   "EPERM",
		"tls listener":             "ok",
	})
	threads, err := ReadThreads(c.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, th := range threads {
		for _, p := range th.Problems(testUID, testGID) {
			t.Error(p)
		}
		if th.Seccomp != 2 {
			t.Errorf("thread %d: Seccomp %d, want 2 (filter)", th.TID, th.Seccomp)
		}
	}
	if len(threads) < 2 {
		t.Errorf("child has %d threads; the check of every thread proves nothing with one", len(threads))
	}
	c.finish(t)
}

// TestSeccompAloneRefuses runs the filter alone in a child that keeps
// root and every capability: what it refuses here, it refuses by itself,
// not because capabilities are gone.
func TestSeccompAloneRefuses(t *testing.T) {
	netns.RequirePriv(t)
	dir := newFixture(t)
	c := startChild(t, "seccomp", dir)
	checkProbes(t, c.results, map[string]string{
		"open /etc/shadow":         "ok",
		"read /etc/passwd":         "ok",
		"write outside":            "ok",
		"write read-only dir":      "ok",
		"write read-write dir":     "ok",
		"exec /bin/sh":             "EPERM",
		"bpf map":                  "EPERM",
		"bpf syscall":              "EPERM",
		"netlink netfilter socket": "EPERM",
		"raw socket bind":          "EPERM",
		"packet socket":            "EPERM",
		"unshare":                  "EPERM",
		"setuid 0":                 "EPERM",
		"kill 1":                   "EPERM",
		"tls listener":             "ok",
	})
	c.finish(t)
}

// TestProbesSucceedUnconfined is the control: without the sandbox, as root,
// every probe succeeds, so each refusal above is the sandbox's doing and
// the status check would see a process that is not confined.
func TestProbesSucceedUnconfined(t *testing.T) {
	netns.RequirePriv(t)
	dir := newFixture(t)
	c := startChild(t, "none", dir)
	want := map[string]string{}
	for probe := range c.results {
		want[probe] = "ok"
	}
	checkProbes(t, c.results, want)
	threads, err := ReadThreads(c.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(threads[0].Problems(testUID, testGID)) == 0 || threads[0].Seccomp != 0 {
		t.Errorf("unconfined child passes the confinement check: %+v", threads[0])
	}
	c.finish(t)
}

func requireLandlock(t *testing.T) {
	t.Helper()
	if landlockABI() < 1 {
		netns.SkipOrFail(t, "kernel without Landlock")
	}
}

// TestConfigRefused: what Apply refuses before it changes anything.
func TestConfigRefused(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"root user", Config{UID: 0, GID: 100}, "must not be root"},
		{"root group", Config{UID: 100, GID: 0}, "must not be root"},
		{"relative path", Config{UID: 100, GID: 100, ReadOnly: []string{"certs"}}, "not absolute"},
		{"missing path", Config{UID: 100, GID: 100, ReadWrite: []string{filepath.Join(dir, "nope")}}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if err := (Config{UID: 100, GID: 100, ReadOnly: []string{dir}}).validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	if !errors.Is((Config{}).validate(), ErrRootTarget) {
		t.Fatal("zero config not refused as root")
	}
}

// TestPolicyAssembles: every name in the allow-list exists on this
// architecture (the library refuses unknown names), and none of the
// refused calls slipped into it.
func TestPolicyAssembles(t *testing.T) {
	p, n := policy()
	if _, err := p.Assemble(); err != nil {
		t.Fatal(err)
	}
	if n < 50 {
		t.Errorf("allow-list has %d calls", n)
	}
	allowed := map[string]bool{}
	for _, g := range p.Syscalls {
		if g.Action != 0x7fff0000 { // SECCOMP_RET_ALLOW
			continue
		}
		for _, name := range g.Names {
			allowed[name] = true
		}
	}
	for _, bad := range []string{"bpf", "setns", "unshare", "mount", "ptrace", "execve", "execveat",
		"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "keyctl",
		"add_key", "request_key", "capset", "prctl", "setuid", "setresuid", "setgid", "seccomp",
		"perf_event_open", "io_uring_setup", "userfaultfd", "kill", "chroot", "pivot_root",
		"process_vm_writev", "socket", "clone3", "open_by_handle_at", "fsopen", "move_mount"} {
		if allowed[bad] {
			t.Errorf("%s is allowed unconditionally", bad)
		}
	}
}
