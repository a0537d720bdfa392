package test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// The workers of these tests run as the system user gatehouse, as in
// production: make deps creates it (CI runs make deps first).
const privsepUser = "gatehouse"

// workerIDs is the uid and gid of privsepUser.
func workerIDs(t *testing.T) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup(privsepUser)
	if err != nil {
		t.Fatalf("the workers' user: %v (make deps creates it)", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

type privsepDaemon struct {
	*daemonProc
	cfg    string
	ca     *certstest.CA
	client *certstest.Leaf
	server *certstest.Leaf // the listener's certificate and key files
}

// startPrivsep runs the real binary as root with enforcement.privsep on
// and n workers (0: privsep off); xdp and nftables off unless extra (the
// enforcement line) says otherwise; run inside ns when not nil.
func startPrivsep(t *testing.T, workers int, extra string, ns *netns.NS, listen string) *privsepDaemon {
	t.Helper()
	if os.Geteuid() != 0 {
		netns.SkipOrFail(t, "privilege separation needs root to start workers as another user")
	}
	ca := certstest.NewCA(t, "acme")
	server := ca.Server(t, "localhost")
	client := ca.Client(t, "acme-cloud", "spiffe://acme/cloud")
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bulk" { // the benchmark's bulk transfer
			w.Write(bulkBody)
			return
		}
		fmt.Fprintf(w, "hello %s", r.Header.Get("X-Gatehouse-Tenant"))
	}))
	t.Cleanup(backend.Close)
	// The fixtures' keys stay 0600 in 0700 directories: the workers read
	// nothing, the enforcer hands them the content.

	dir := t.TempDir()
	metrics := testkit.FreeLoopbackAddr(t)
	if listen == "" {
		listen = testkit.FreeLoopbackAddr(t)
	}
	enf := fmt.Sprintf(`enforcement: {xdp: "off", nftables: false, privsep: true, workers: %d, worker_user: `+privsepUser+`}`, workers)
	if workers == 0 {
		enf = `enforcement: {xdp: "off", nftables: false, privsep: false}`
	}
	if extra != "" {
		enf = extra
	}
	cfg := fmt.Sprintf(enf+`
state_dir: %s
shutdown_grace: 2s
admin_socket: %[1]s/admin.sock
metrics: {listen: "%s"}
tenants: [{id: acme, client_ca: %s, identities: {uri_san: ["spiffe://acme/*"]}}]
listeners:
  - {name: web, listen: "%s", protocol: https, server_cert: %s, server_key: %s,
     routes: [{tenant: acme, backend: "%s"}]}
`, dir, metrics, ca.CertFile, listen, server.CertFile, server.KeyFile, backend.URL)
	path := filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary(t), "run", "-c", path)
	client2 := http.DefaultClient
	if ns != nil {
		cmd = ns.Command(binary(t), "run", "-c", path)
	}
	d := launch(t, cmd, metrics, client2)
	d.listen = listen
	return &privsepDaemon{daemonProc: d, cfg: path, ca: ca, client: client, server: server}
}

// status asks the daemon's admin socket.
func (d *privsepDaemon) status(t *testing.T) daemon.Status {
	t.Helper()
	out, err := exec.Command(binary(t), "status", "--json", "-c", d.cfg).Output()
	if err != nil {
		t.Fatalf("gatehouse status: %v\n%s", err, d.out.String())
	}
	var st daemon.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestPrivsepServesFromConfinedWorkers(t *testing.T) {
	d := startPrivsep(t, 2, "", nil, "")
	body, err := tlsGet(t, d.listen, d.ca, d.client)
	if err != nil || body != "hello acme" {
		t.Fatalf("GET through a worker: %q, %v\n%s", body, err, d.out.String())
	}
	st := d.status(t)
	if st.Privsep == nil || !st.Privsep.On || len(st.Privsep.Workers) != 2 {
		t.Fatalf("status privsep: %+v", st.Privsep)
	}
	// The workers keep their session-ticket keys below state_dir (a
	// t.TempDir: root's directories, 0700, all the way up), reached
	// through the directory the enforcer passed them.
	uid, _ := workerIDs(t)
	fi, err := os.Stat(filepath.Join(filepath.Dir(d.cfg), "tls-tickets", "web"))
	if err != nil {
		t.Fatalf("the workers' ticket keys: %v\n%s", err, d.out.String())
	}
	if owner := fi.Sys().(*syscall.Stat_t).Uid; int(owner) != uid || fi.Mode().Perm() != 0o600 {
		t.Errorf("ticket keys %v owned by %d, want 0600 owned by the workers' uid %d", fi.Mode(), owner, uid)
	}
	out, err := exec.Command(binary(t), "status", "-c", d.cfg).Output()
	if err != nil || !regexp.MustCompile(`privsep +on: 2 workers as gatehouse`).MatchString(string(out)) || !strings.Contains(string(out), `tls_handshakes_total{listener="web",result="ok",tenant="acme"}`) {
		t.Errorf("gatehouse status: %v\n%s", err, out)
	}
	if !strings.Contains(d.out.String(), "worker confined") {
		t.Fatalf("no worker start line:\n%s", d.out.String())
	}
}

// TestPrivsepCheckRefusesWorkerUser: check refuses, as run would, a
// worker user that does not exist or is root.
func TestPrivsepCheckRefusesWorkerUser(t *testing.T) {
	ca := certstest.NewCA(t, "acme")
	server := ca.Server(t, "localhost")
	dir := t.TempDir()
	for user, want := range map[string]string{
		"gatehouse-no-such-user": `enforcement.worker_user "gatehouse-no-such-user"`,
		"root":                   "enforcement.worker_user",
	} {
		cfg := fmt.Sprintf(`
enforcement: {xdp: "off", nftables: false, privsep: true, worker_user: %s}
state_dir: %s
tenants: [{id: acme, client_ca: %s}]
listeners:
  - {name: web, listen: "127.0.0.1:8443", protocol: https, server_cert: %s, server_key: %s,
     routes: [{tenant: acme, backend: "http://127.0.0.1:1"}]}
`, user, dir, ca.CertFile, server.CertFile, server.KeyFile)
		path := filepath.Join(dir, user+".yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range [][]string{{"check", "-c", path}, {"run", "-c", path}} {
			out, err := exec.Command(binary(t), cmd...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), want) {
				t.Errorf("%s with worker_user %s: %v, want a refusal naming %s:\n%s", cmd[0], user, err, want, out)
			}
		}
	}
}

// TestPrivsepSessionCutsAndAccessTail: the admin API's session kill
// reaches the sessions the workers hold, and the workers' access log lines
// are in the daemon's access log tail.
func TestPrivsepSessionCutsAndAccessTail(t *testing.T) {
	d := startPrivsep(t, 2, "", nil, "")
	c, err := tls.Dial("tcp", d.listen, &tls.Config{RootCAs: d.ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{d.client.TLS}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "GET /live HTTP/1.1\r\nHost: localhost\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	out, err := exec.Command(binary(t), "sessions", "kill", "tenant:acme", "-c", d.cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "1 sessions closed") {
		t.Fatalf("sessions kill: %v: %s\n%s", err, out, d.out.String())
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("the killed session is still open")
	}

	admin := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(filepath.Dir(d.cfg), "admin.sock"))
		}}}
	r, err := admin.Get("http://gatehouse/access-log?n=10")
	if err != nil {
		t.Fatal(err)
	}
	tail, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || !strings.Contains(string(tail), `"tenant":"acme"`) || !strings.Contains(string(tail), `"status":200`) {
		t.Fatalf("access log tail (%d) lacks the worker's line:\n%s", r.StatusCode, tail)
	}
}

// TestPrivsepReloadAddsListener: SIGHUP with a second listener binds its
// sockets in the enforcer and passes them to every worker (SCM_RIGHTS),
// which serve it; a reload naming a certificate and key in a directory
// nobody but root may read, new since the start, just works: the enforcer
// reads them and hands them over.
func TestPrivsepReloadAddsListener(t *testing.T) {
	d := startPrivsep(t, 2, "", nil, "")
	cfg, err := os.ReadFile(d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	second := testkit.FreeLoopbackAddr(t)
	web := regexp.MustCompile(`(?s)  - \{name: web, listen: "[^"]*"(.*)`).FindStringSubmatch(string(cfg))
	if web == nil {
		t.Fatalf("no web listener in\n%s", cfg)
	}
	more := string(cfg) + `  - {name: web2, listen: "` + second + `"` + strings.TrimSuffix(web[1], "\n") + "\n"
	if err := os.WriteFile(d.cfg, []byte(more), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.waitFor(t, "the reload", func() bool { return strings.Contains(d.out.String(), "configuration reloaded") })
	for range 6 { // both workers' sockets, most likely
		if body, err := tlsGet(t, second, d.ca, d.client); err != nil || body != "hello acme" {
			t.Fatalf("GET on the added listener: %q, %v\n%s", body, err, d.out.String())
		}
	}
	if body, err := tlsGet(t, d.listen, d.ca, d.client); err != nil || body != "hello acme" {
		t.Fatalf("GET on the first listener: %q, %v", body, err)
	}

	// A certificate and key in a directory the workers were never given,
	// root's and 0700, the key 0600.
	fresh := d.ca.Server(t, "localhost")
	dir, err := os.MkdirTemp("", "gatehouse-newcerts-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	newCert, newKey := filepath.Join(dir, "web3.crt"), filepath.Join(dir, "web3.key")
	for src, dst := range map[string]string{fresh.CertFile: newCert, fresh.KeyFile: newKey} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	moved := strings.Replace(more, "name: web2", "name: web3", 1)
	moved = regexp.MustCompile(`(name: web3.*?server_cert: )\S+, server_key: \S+,`).
		ReplaceAllString(moved, "${1}"+newCert+", server_key: "+newKey+",")
	if err := os.WriteFile(d.cfg, []byte(moved), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.waitFor(t, "the second reload", func() bool { return strings.Count(d.out.String(), "configuration reloaded") >= 2 })
	if strings.Contains(d.out.String(), "reload refused") {
		t.Fatalf("the reload was refused:\n%s", d.out.String())
	}
	want := fresh.Cert.SerialNumber
	for range 6 {
		conn, err := tls.Dial("tcp", second, &tls.Config{RootCAs: d.ca.Pool(), Certificates: []tls.Certificate{d.client.TLS}, ServerName: "localhost"})
		if err != nil {
			t.Fatalf("handshake on web3: %v\n%s", err, d.out.String())
		}
		got := conn.ConnectionState().PeerCertificates[0].SerialNumber
		conn.Close()
		if got.Cmp(want) != 0 {
			t.Fatalf("web3 serves serial %v, want the moved certificate's %v", got, want)
		}
	}
	if body, err := tlsGet(t, second, d.ca, d.client); err != nil || body != "hello acme" {
		t.Fatalf("after the reload: %q, %v", body, err)
	}
}

// serverSerial is the serial of the certificate the listener presents.
func (d *privsepDaemon) serverSerial(t *testing.T) string {
	t.Helper()
	conn, err := tls.Dial("tcp", d.listen, &tls.Config{RootCAs: d.ca.Pool(), Certificates: []tls.Certificate{d.client.TLS}, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("handshake: %v\n%s", err, d.out.String())
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// TestPrivsepCertificateFileChange: the server certificate and key are
// rewritten in place (root's, 0600): the enforcer sees the change, hands
// the workers the new content, and every worker presents the new
// certificate without a reload; no worker ever opened the files.
func TestPrivsepCertificateFileChange(t *testing.T) {
	d := startPrivsep(t, 2, "", nil, "")
	old := d.serverSerial(t)
	next := d.ca.Server(t, "localhost")
	for src, dst := range map[string]string{next.KeyFile: d.server.KeyFile, next.CertFile: d.server.CertFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	want := next.Cert.SerialNumber.String()
	d.waitFor(t, "the new certificate from every worker", func() bool {
		for range 8 { // both workers' sockets, most likely
			if d.serverSerial(t) != want {
				return false
			}
		}
		return true
	})
	if old == want {
		t.Fatal("the test's two certificates share a serial")
	}
}
