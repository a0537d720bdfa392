package test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
)

// buildBinary compiles gatehouse once per test binary.
var buildOnce struct {
	sync.Once
	path string
	err  error
}

func binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gatehouse-bin-")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.path = filepath.Join(dir, "gatehouse")
		out, err := exec.Command("go", "build", "-o", buildOnce.path, module+"/cmd/gatehouse").CombinedOutput()
		if err != nil {
			buildOnce.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.path
}

type daemonProc struct {
	slow    chan struct{} // startDaemon: the backend got a request for /slow
	cmd     *exec.Cmd
	out     *testkit.LogBuffer
	metrics string
	listen  string
	exited  chan struct{} // closed when the process has exited
	exitErr error         // valid once exited is closed
	// http reaches the metrics endpoint (from inside the daemon's namespace
	// where it runs in one).
	http *http.Client
}

// launch starts cmd (a gatehouse run) and waits until it is ready.
func launch(t *testing.T, cmd *exec.Cmd, metrics string, client *http.Client) *daemonProc {
	t.Helper()
	d := &daemonProc{cmd: cmd, out: &testkit.LogBuffer{}, metrics: metrics, exited: make(chan struct{}), http: client}
	if cmd.Stdout == nil { // else the caller reads the access log
		cmd.Stdout = d.out
	}
	cmd.Stderr = d.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exitErr = cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() { d.kill() })
	d.waitFor(t, "readiness", func() bool { code, _ := d.get(t, "/readyz"); return code == 200 })
	return d
}

// kill ends the daemon at once (SIGKILL) if it is still running.
func (d *daemonProc) kill() {
	select {
	case <-d.exited:
	default:
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

func (d *daemonProc) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := d.http.Get("http://" + d.metrics + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (d *daemonProc) waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; daemon output:\n%s", what, d.out.String())
}

// startDaemon runs the real binary with xdp and nftables off (they have
// their own privileged tests), a real HTTPS listener and a real backend.
func startDaemon(t *testing.T) (*daemonProc, string, *certstest.CA, *certstest.Leaf) {
	t.Helper()
	return startDaemonOut(t, nil)
}

// startDaemonOut is startDaemon with the daemon's stdout (its access log)
// going to stdout; nil: to the daemon's output buffer.
func startDaemonOut(t *testing.T, stdout io.Writer) (*daemonProc, string, *certstest.CA, *certstest.Leaf) {
	t.Helper()
	ca := certstest.NewCA(t, "acme")
	server := ca.Server(t, "localhost")
	client := ca.Client(t, "acme-cloud", "spiffe://acme/cloud")
	slow := make(chan struct{}, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" { // a request still in flight a second later
			slow <- struct{}{}
			time.Sleep(time.Second)
		}
		fmt.Fprintf(w, "hello %s", r.Header.Get("X-Gatehouse-Tenant"))
	}))
	t.Cleanup(backend.Close)

	dir := t.TempDir()
	metrics, listen := testkit.FreeLoopbackAddr(t), testkit.FreeLoopbackAddr(t)
	cfg := fmt.Sprintf(`
enforcement: {xdp: "off", nftables: false}
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
	cmd.Stdout = stdout
	d := launch(t, cmd, metrics, http.DefaultClient)
	d.listen, d.slow = listen, slow
	return d, path, ca, client
}

func tlsGet(t *testing.T, addr string, ca *certstest.CA, client *certstest.Leaf) (string, error) {
	t.Helper()
	return tlsGetPath(addr, "/", ca, client)
}

func tlsGetPath(addr, path string, ca *certstest.CA, client *certstest.Leaf) (string, error) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{client.TLS},
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestSIGHUPBrokenConfigChangesNothing(t *testing.T) {
	d, path, ca, client := startDaemon(t)
	if body, err := tlsGet(t, d.listen, ca, client); err != nil || body != "hello acme" {
		t.Fatalf("request through the daemon: %q %v\n%s", body, err, d.out.String())
	}
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A configuration that refers to a tenant nobody defined.
	if err := os.WriteFile(path, bytes.Replace(good, []byte("tenant: acme"), []byte("tenant: acme2"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.waitFor(t, "the refused reload to be counted", func() bool {
		_, m := d.get(t, "/metrics")
		return strings.Contains(m, `gatehouse_config_reloads_total{result="error"} 1`)
	})
	if !strings.Contains(d.out.String(), `unknown tenant \"acme2\"`) {
		t.Errorf("log does not say why the reload was refused:\n%s", d.out.String())
	}
	if body, err := tlsGet(t, d.listen, ca, client); err != nil || body != "hello acme" {
		t.Errorf("after a refused reload the old state must serve: %q %v", body, err)
	}
	if code, _ := d.get(t, "/readyz"); code != 200 {
		t.Errorf("not ready after a refused reload: %d", code)
	}
}

func TestSIGTERMDrainsAndExitsZero(t *testing.T) {
	d, _, ca, client := startDaemon(t)
	if _, err := tlsGet(t, d.listen, ca, client); err != nil {
		t.Fatalf("request through the daemon: %v\n%s", err, d.out.String())
	}
	// A request in flight at SIGTERM: the daemon stops accepting at once,
	// lets the request finish within shutdown_grace (2 s), then exits 0.
	inFlight := make(chan string, 1)
	go func() {
		body, err := tlsGetPath(d.listen, "/slow", ca, client)
		if err != nil {
			body = err.Error()
		}
		inFlight <- body
	}()
	select {
	case <-d.slow:
	case <-time.After(10 * time.Second):
		t.Fatalf("the slow request never reached the backend\n%s", d.out.String())
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d.waitFor(t, "the drain", func() bool { return strings.Contains(d.out.String(), "draining sessions") })
	select {
	case <-d.exited:
		t.Fatalf("daemon exited with a request in flight\n%s", d.out.String())
	default:
	}
	if c, err := net.DialTimeout("tcp", d.listen, time.Second); err == nil {
		c.Close()
		t.Error("listener still accepts while draining")
	}
	if body := <-inFlight; body != "hello acme" {
		t.Errorf("the request in flight at SIGTERM: %q, want it answered", body)
	}
	select {
	case <-d.exited:
		if d.exitErr != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", d.exitErr, d.out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon did not exit after SIGTERM\n%s", d.out.String())
	}
	if !strings.Contains(d.out.String(), "gatehouse stopped") {
		t.Errorf("log does not show the stop:\n%s", d.out.String())
	}

}
