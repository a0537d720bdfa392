package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestReloadAppliesTLSKeys: the tls: keys are no start-only keys; a reload
// hands them to the components, which apply them without a restart.
func TestReloadAppliesTLSKeys(t *testing.T) {
	var mu sync.Mutex
	var got []policy.TLS
	a := &recorder{name: "certs", refuse: func(p *policy.Policy) bool {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, p.TLS)
		return false
	}}
	d, dir, _, stop := start(t, a)
	defer stop()
	path := filepath.Join(dir, "gatehouse.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, "tls: {crl_stale: warn, session_tickets: false, ticket_rotation: 1h}\n"...)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err != nil {
		t.Fatalf("reload with changed tls keys: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []policy.TLS{
		{CRLStale: policy.CRLStaleFail, TicketRotation: 6 * time.Hour},
		{CRLStale: policy.CRLStaleWarn, SessionTicketsDisabled: true, TicketRotation: time.Hour},
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("components were given %+v, want %+v", got, want)
	}
}

// realTLS is a daemon running the real certificate and proxy components
// (kernel layers off) with a tenant acme whose CRL revokes one certificate.
type realTLS struct {
	d       *Daemon
	logs    *testkit.LogBuffer
	ca      *certstest.CA
	good    *certstest.Leaf
	revoked *certstest.Leaf
	pool    *x509.CertPool // trusts the listener's certificate
	web     string         // the https listener's address
	tn      string         // the tn3270 listener's address, with START_TLS
	metrics string         // the metrics endpoint's address
	crl     string         // acme's CRL file
}

func startRealTLS(t *testing.T) *realTLS {
	t.Helper()
	r := &realTLS{logs: &testkit.LogBuffer{}, ca: certstest.NewCA(t, "acme")}
	r.good = r.ca.Client(t, "acme cloud")
	r.revoked = r.ca.Client(t, "acme lost laptop")
	dir := t.TempDir()
	r.crl = r.ca.CRL(t, filepath.Join(dir, "acme.crl"), time.Now().Add(time.Hour), r.revoked)
	serverCA := certstest.NewCA(t, "gateway")
	srv := serverCA.Server(t, "localhost", "127.0.0.1")
	r.pool = serverCA.Pool()
	// A port freePort found may be taken by another test before the daemon
	// binds it: then the start fails at once, and is tried on new ports.
	for attempt := 1; ; attempt++ {
		r.web, r.tn, r.metrics = freePort(t), freePort(t), freePort(t)
		cfg := fmt.Sprintf(`
enforcement: {xdp: "off", nftables: false}
state_dir: %[1]s
admin_socket: ""
metrics: {listen: "%[2]s"}
shutdown_grace: 1s
tenants: [{id: acme, client_ca: %[3]s, crl: %[4]s}]
listeners:
  - {name: web, listen: "%[5]s", protocol: https, server_cert: %[6]s, server_key: %[7]s,
     routes: [{tenant: acme, backend: "http://127.0.0.1:1"}]}
  - {name: raw, listen: "%[8]s", protocol: tcp, server_cert: %[6]s, server_key: %[7]s,
     routes: [{tenant: acme, backend: "127.0.0.1:1"}]}
  - {name: tn, listen: "%[9]s", protocol: tn3270, starttls: true, server_cert: %[6]s, server_key: %[7]s,
     routes: [{tenant: acme, backend: "127.0.0.1:1"}]}
`, dir, r.metrics, r.ca.CertFile, r.crl, r.web, srv.CertFile, srv.KeyFile, freePort(t), r.tn)
		path := filepath.Join(dir, "gatehouse.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		// The workers (enforcement.privsep) log into the same buffer.
		d, err := New(Options{ConfigPath: path, Logger: slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Worker: WorkerOptions{Stderr: r.logs, LogLevel: "debug"}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		// Ready is asked of the daemon itself first: another process
		// answering on a port taken from under it must not pass for it.
		// Once it has a policy in force, the metrics port is its own, and
		// its /readyz answers only after Run has set up what Status reads.
		var runErr error
		waitFor(t, "the daemon to be ready or to fail", func() bool {
			select {
			case runErr = <-done:
				return true
			default:
			}
			if d.Policy() == nil {
				return false
			}
			resp, err := http.Get("http://" + r.metrics + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
		if runErr == nil {
			r.d = d
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("daemon: %v", err)
				}
			})
			return r
		}
		cancel()
		if attempt == 3 || !errors.Is(runErr, syscall.EADDRINUSE) {
			t.Fatalf("daemon did not start: %v", runErr)
		}
	}
}

// dial runs a TLS handshake with the web listener presenting cert (none
// when nil); for a refused one it reads the alert.
func (r *realTLS) dial(t *testing.T, cert *certstest.Leaf, refused bool) {
	t.Helper()
	cc := &tls.Config{RootCAs: r.pool, ServerName: "localhost"}
	if cert != nil {
		cc.Certificates = []tls.Certificate{cert.TLS}
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", r.web, cc)
	if err != nil {
		return
	}
	defer c.Close()
	if refused {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Read(make([]byte, 1)) // TLS 1.3: a refusal arrives after the client's Finished
	}
}

// TestRefusalsInStatusAndLog: a partner refused in the handshake sees only
// an alert; the admin finds the refusal in the status (time, listener,
// source, result, reason, the certificate's subject, issuer and
// fingerprint) and in one log line at info with the same fields.
func TestRefusalsInStatusAndLog(t *testing.T) {
	r := startRealTLS(t)
	r.dial(t, r.good, false) // accepted: no refusal
	r.dial(t, r.revoked, true)
	var got []certs.Refusal
	waitFor(t, "the refusal in the status", func() bool {
		got = r.d.Status().Refusals
		return len(got) > 0
	})
	ref := got[0]
	fp := certs.FingerprintSHA256(r.revoked.Cert)
	if len(got) != 1 || ref.Listener != "web" || !strings.HasPrefix(ref.Source, "127.0.0.1:") || ref.Result != certs.ResultRevoked ||
		ref.Tenant != "acme" || ref.Subject != r.revoked.Cert.Subject.String() || ref.Issuer != r.ca.Cert.Subject.String() ||
		ref.FingerprintSHA256 != fp || !strings.Contains(ref.Reason, "on CRL") || time.Since(ref.Time) > time.Minute {
		t.Errorf("status refusals %+v", got)
	}
	b, err := json.Marshal(r.d.Status())
	if err != nil || !strings.Contains(string(b), `"refusals":[{"time":`) || !strings.Contains(string(b), `"fingerprint_sha256":"`+fp+`"`) {
		t.Errorf("status JSON lacks the refusal: %v\n%s", err, b)
	}
	var line string
	waitFor(t, "the refusal's log line", func() bool {
		for _, l := range strings.Split(r.logs.String(), "\n") {
			if strings.Contains(l, `msg="TLS handshake refused"`) {
				line = l
			}
		}
		return line != ""
	})
	for _, want := range []string{"level=INFO", "listener=web", "source=" + ref.Source, "result=revoked", "tenant=acme",
		`subject="CN=acme lost laptop"`, `issuer="CN=acme,O=gatehouse test"`, "fingerprint_sha256=" + fp, "on CRL"} {
		if !strings.Contains(line, want) {
			t.Errorf("refusal log line lacks %s:\n%s", want, line)
		}
	}
}

// handshakes reads gatehouse_tls_handshakes_total{listener,tenant,result}
// from the daemon's registry; ok is false when the series does not exist.
func handshakes(t *testing.T, d *Daemon, listener, tenant string, result certs.Result) (v float64, ok bool) {
	t.Helper()
	mfs, err := d.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "gatehouse_tls_handshakes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := labels(m)
			if l["listener"] == listener && l["tenant"] == tenant && l["result"] == string(result) {
				return m.GetCounter().GetValue(), true
			}
		}
	}
	return 0, false
}

// TestClientClosedIsNoRefusal: a client that connects and closes during
// the handshake (a health checker) is counted as client_closed and logged
// at debug, not as a refused handshake.
func TestClientClosedIsNoRefusal(t *testing.T) {
	r := startRealTLS(t)
	c, err := net.Dial("tcp", r.web)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitFor(t, "client_closed counted", func() bool {
		v, _ := handshakes(t, r.d, "web", "none", certs.ResultClientClosed)
		return v == 1
	})
	if got := r.d.Status().Refusals; len(got) != 0 {
		t.Errorf("status lists a client that closed as refused: %+v", got)
	}
	if v, _ := handshakes(t, r.d, "web", "none", certs.ResultOther); v != 0 {
		t.Errorf("counted as other too: %v", v)
	}
	// The line follows the count (a worker's carries its index).
	abandoned := regexp.MustCompile(`level=DEBUG msg="TLS handshake abandoned by the client before it sent a certificate"( worker=\d+)? component=proxy listener=web`)
	waitFor(t, "the debug line", func() bool { return abandoned.MatchString(r.logs.String()) })
	if logs := r.logs.String(); strings.Contains(logs, "TLS handshake refused") {
		t.Errorf("a client that closed is logged as refused:\n%s", logs)
	}
}

// TestHandshakeSeriesAfterStart scrapes /metrics right after start: the
// series of gatehouse_tls_handshakes_total the configuration determines
// exist at 0 before any handshake.
func TestHandshakeSeriesAfterStart(t *testing.T) {
	r := startRealTLS(t)
	resp, err := http.Get("http://" + r.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, l := range []string{"web", "raw", "tn"} {
		for _, res := range []string{"no_cert", "unknown_ca", "expired", "not_yet_valid", "no_tenant", "ambiguous_tenant", "protocol_version", "other", "client_closed"} {
			want = append(want, fmt.Sprintf(`{listener=%q,result=%q,tenant="none"} 0`, l, res))
		}
		for _, res := range []string{"ok", "revoked", "crl_stale", "no_crl"} {
			want = append(want, fmt.Sprintf(`{listener=%q,result=%q,tenant="acme"} 0`, l, res))
		}
	}
	for _, w := range want {
		if !strings.Contains(string(b), "gatehouse_tls_handshakes_total"+w+"\n") {
			t.Errorf("/metrics right after start lacks gatehouse_tls_handshakes_total%s", w)
		}
	}
	if n := strings.Count(string(b), "\ngatehouse_tls_handshakes_total{"); n != len(want) {
		t.Errorf("%d handshake series, want the %d the configuration determines", n, len(want))
	}
}
