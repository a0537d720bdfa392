package proxy_test

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy"
)

// envWorld is a proxy behind the real certificate manager, with tenant
// acme split into production and development by URI SAN, and globex
// without environments. Every listener routes both environments of acme
// to backends of their own, alike in all but the environment.
type envWorld struct {
	t        *testing.T
	m        *certs.Manager
	srv      *proxy.Server
	access   *testkit.LogBuffer
	logs     *testkit.LogBuffer
	serverCA *certstest.CA
	pol      *policy.Policy

	prod, dev, both, neither, globex tls.Certificate
	host                             chan net.Conn // the tn3270 host's accepted sessions
}

var prodEnv = policy.Identities{URISAN: []string{"spiffe://acme/prod-*"}}
var devEnv = policy.Identities{URISAN: []string{"spiffe://acme/dev-*"}, CommonName: []string{"shared"}}

func newEnvWorld(t *testing.T) *envWorld {
	w := &envWorld{t: t, access: &testkit.LogBuffer{}, logs: &testkit.LogBuffer{}}
	w.serverCA = certstest.NewCA(t, "server CA")
	server := w.serverCA.Server(t, "localhost", "127.0.0.1")
	acmeCA, globexCA := certstest.NewCA(t, "acme CA"), certstest.NewCA(t, "globex CA")
	w.prod = acmeCA.Client(t, "acme prod", "spiffe://acme/prod-app").TLS
	w.dev = acmeCA.Client(t, "acme dev", "spiffe://acme/dev-app").TLS
	w.both = acmeCA.Client(t, "shared", "spiffe://acme/prod-shared").TLS
	w.neither = acmeCA.Client(t, "acme qa", "spiffe://acme/qa-app").TLS
	w.globex = globexCA.Client(t, "globex").TLS

	web := func(name string) string { return newBackend(t, name).url() }
	line := func(name string) string {
		return serveTCP(t, func(c net.Conn) {
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				io.WriteString(c, name+":"+l)
			}
		})
	}
	host, accepted := fakeHost(t)
	w.host = accepted
	soap := []string{"urn:acme:Get"}
	lst := func(name string, proto policy.Protocol, routes ...policy.Route) policy.Listener {
		l := listener(name, proto, routes...)
		l.Port = freePort(t)
		l.ServerCert, l.ServerKey = server.CertFile, server.KeyFile
		return l
	}
	w.pol = &policy.Policy{
		Generation: 1,
		Tenants: []policy.Tenant{
			{ID: "acme", ClientCA: acmeCA.CertFile, Identities: policy.Identities{URISAN: []string{"spiffe://acme/*"}},
				Environments: []policy.Environment{{Name: "production", Identities: prodEnv}, {Name: "development", Identities: devEnv}}},
			{ID: "globex", ClientCA: globexCA.CertFile},
		},
		Listeners: []policy.Listener{
			lst("web", policy.ProtoHTTPS,
				policy.Route{Tenant: "acme", Environment: "production", Backend: web("acme-prod")},
				policy.Route{Tenant: "acme", Environment: "development", Backend: web("acme-dev")},
				policy.Route{Tenant: "globex", Backend: web("globex")}),
			lst("svc", policy.ProtoSOAP,
				policy.Route{Tenant: "acme", Environment: "production", Backend: web("soap-prod"), SOAPActions: soap},
				policy.Route{Tenant: "acme", Environment: "development", Backend: web("soap-dev"), SOAPActions: soap}),
			lst("raw", policy.ProtoTCP,
				policy.Route{Tenant: "acme", Environment: "production", Backend: line("prod")},
				policy.Route{Tenant: "acme", Environment: "development", Backend: line("dev")}),
			lst("rawprod", policy.ProtoTCP,
				policy.Route{Tenant: "acme", Environment: "production", Backend: line("prod")}),
			lst("mf", policy.ProtoTN3270,
				policy.Route{Tenant: "acme", Environment: "production", Backend: host}),
			lst("ws", policy.ProtoHTTPS,
				policy.Route{Tenant: "acme", Environment: "production", Backend: newWSBackend(t, "prod", false).url, WebSocket: true},
				policy.Route{Tenant: "acme", Environment: "development", Backend: newWSBackend(t, "dev", false).url, WebSocket: true}),
		},
	}
	if errs := w.pol.CheckListeners(); len(errs) > 0 {
		t.Fatal(errs[0])
	}
	m, err := certs.New(certs.Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Apply(w.pol); err != nil {
		t.Fatal(err)
	}
	w.m = m
	srv, err := proxy.New(proxy.Config{
		Logger:    slog.New(slog.NewTextHandler(w.logs, nil)),
		TLS:       m,
		AccessLog: slog.New(slog.NewJSONHandler(w.access, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	// As the daemon wires them: a change of the TLS state judges every
	// live connection again.
	m.OnChange(func() { srv.Revalidate() })
	if err := srv.Apply(w.pol); err != nil {
		t.Fatal(err)
	}
	w.srv = srv
	return w
}

func (w *envWorld) addr(name string) string {
	a, ok := w.srv.Addr(name)
	if !ok {
		w.t.Fatalf("listener %q not running", name)
	}
	return a.String()
}

func (w *envWorld) clientTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: w.serverCA.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
}

// dial opens a TLS connection with cc to the listener; a refused
// certificate shows as an error, on the handshake or on the first read
// (TLS 1.3 sends the refusal after the client's Finished).
func (w *envWorld) dial(name string, cc *tls.Config) (*tls.Conn, error) {
	c, err := tls.Dial("tcp", w.addr(name), cc)
	if err != nil {
		return nil, err
	}
	w.t.Cleanup(func() { c.Close() })
	return c, nil
}

// get sends one HTTP/1.1 request and returns the status and the backend's echo.
func (w *envWorld) get(name string, cert tls.Certificate, req string) (int, echo, error) {
	c, err := w.dial(name, w.clientTLS(cert))
	if err != nil {
		return 0, echo{}, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return 0, echo{}, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, echo{}, err
	}
	defer resp.Body.Close()
	var e echo
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e, nil
}

// say writes a line on a tcp session and returns the backend's answer.
func say(c *tls.Conn, br *bufio.Reader) (string, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "hi\n"); err != nil {
		return "", err
	}
	return br.ReadString('\n')
}

// TestEnvironmentRouting: a certificate of acme/production reaches the
// production routes only, and one of acme/development the development
// routes only, on https, soap, tcp and tn3270; the backend is told the
// environment; a certificate matching both environments, or none, is
// refused in the handshake; a tenant without environments is served as
// before.
func TestEnvironmentRouting(t *testing.T) {
	w := newEnvWorld(t)
	for _, tc := range []struct {
		cert                tls.Certificate
		env, web, soap, tcp string
	}{
		{w.prod, "production", "acme-prod", "soap-prod", "prod"},
		{w.dev, "development", "acme-dev", "soap-dev", "dev"},
	} {
		code, e, err := w.get("web", tc.cert, "GET /x HTTP/1.1\r\nHost: localhost\r\nX-Gatehouse-Environment: production\r\n\r\n")
		if err != nil || code != 200 || e.Backend != tc.web {
			t.Fatalf("%s on https: %d %q %v, want %s", tc.env, code, e.Backend, err, tc.web)
		}
		if got := e.Header.Values("X-Gatehouse-Environment"); len(got) != 1 || got[0] != tc.env {
			t.Errorf("%s: the backend was told environment %q", tc.env, got)
		}
		env := soapEnvelope("Get", "urn:acme")
		code, e, err = w.get("svc", tc.cert, fmt.Sprintf("POST /svc HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nSOAPAction: \"urn:acme:Get\"\r\nContent-Length: %d\r\n\r\n%s", len(env), env))
		if err != nil || code != 200 || e.Backend != tc.soap {
			t.Fatalf("%s on soap: %d %q %v, want %s", tc.env, code, e.Backend, err, tc.soap)
		}
		c, err := w.dial("raw", w.clientTLS(tc.cert))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := say(c, bufio.NewReader(c)); got != tc.tcp+":hi\n" {
			t.Fatalf("%s on tcp: %q %v", tc.env, got, err)
		}
	}
	if !logged(w.access, `"environment":"development"`) || !logged(w.access, `"environment":"production"`) {
		t.Errorf("access log does not name the environments:\n%s", w.access.String())
	}

	// tn3270 routes production only: development reaches no host.
	dc, err := w.dial("mf", w.clientTLS(w.dev))
	if err == nil {
		dc.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.ReadAll(dc) // until the refusal closes it
	}
	select {
	case <-w.host:
		t.Fatal("a development certificate reached the production terminal host")
	default:
	}
	if !logged(w.logs, "telnet session refused: no route", "environment=development") {
		t.Errorf("no refusal naming the environment in the log:\n%s", w.logs.String())
	}
	pc, err := w.dial("mf", w.clientTLS(w.prod))
	if err != nil {
		t.Fatal(err)
	}
	pc.SetDeadline(time.Now().Add(10 * time.Second))
	pc.Write([]byte{255, 251, 24}) // IAC WILL TERMINAL-TYPE
	select {
	case <-w.host:
	case <-time.After(10 * time.Second):
		t.Fatal("a production certificate never reached the production terminal host")
	}

	// The metrics tell the environments apart.
	reg := prometheus.NewRegistry()
	if err := reg.Register(w.srv); err != nil {
		t.Fatal(err)
	}
	for _, want := range []map[string]string{
		{"__name__": "gatehouse_http_requests_total", "listener": "web", "tenant": "acme", "environment": "production", "code": "200"},
		{"__name__": "gatehouse_http_requests_total", "listener": "svc", "tenant": "acme", "environment": "development", "code": "200"},
		{"__name__": "gatehouse_telnet_sessions_total", "listener": "mf", "tenant": "acme", "environment": "development", "result": "no_route"},
	} {
		if v := gathered(t, reg, want); v != 1 {
			t.Errorf("%v = %v, want 1", want, v)
		}
	}

	// Two environments, or none: refused in the handshake.
	for name, cert := range map[string]tls.Certificate{"both": w.both, "neither": w.neither} {
		if code, e, err := w.get("web", cert, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"); err == nil {
			t.Errorf("certificate matching %s environments served: %d by %q", name, code, e.Backend)
		}
	}
	// The listener records a refusal once its side of the handshake ends.
	refused := func(res certs.Result) bool {
		for _, r := range w.m.Refusals() {
			if r.Result == res && r.Tenant == "acme" {
				return true
			}
		}
		return false
	}
	for _, res := range []certs.Result{certs.ResultAmbiguousEnvironment, certs.ResultNoEnvironment} {
		if !waitFor(func() bool { return refused(res) }) {
			t.Errorf("no %s refusal of tenant acme in %+v", res, w.m.Refusals())
		}
	}

	// A tenant without environments: its one route, environment default.
	code, e, err := w.get("web", w.globex, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
	if err != nil || code != 200 || e.Backend != "globex" || e.Header.Get("X-Gatehouse-Environment") != policy.DefaultEnvironment {
		t.Fatalf("globex: %d %q %v, environment %q", code, e.Backend, err, e.Header.Get("X-Gatehouse-Environment"))
	}
}

// TestEnvironmentReload: a reload that moves a certificate to another
// environment ends its live sessions, as one that moves a route to
// another environment ends the sessions on it; a resumed session of the
// moved certificate is judged again and reaches no production route.
func TestEnvironmentReload(t *testing.T) {
	w := newEnvWorld(t)
	cache := tls.NewLRUClientSessionCache(8)
	cc := w.clientTLS(w.prod)
	cc.ClientSessionCache = cache
	p, err := w.dial("rawprod", cc)
	if err != nil {
		t.Fatal(err)
	}
	pr := bufio.NewReader(p)
	if got, err := say(p, pr); got != "prod:hi\n" {
		t.Fatalf("production session: %q %v", got, err)
	}
	d, err := w.dial("raw", w.clientTLS(w.dev))
	if err != nil {
		t.Fatal(err)
	}
	dr := bufio.NewReader(d)
	if got, err := say(d, dr); got != "dev:hi\n" {
		t.Fatalf("development session: %q %v", got, err)
	}

	// The production certificate moves to development.
	moved := *w.pol
	moved.Generation = 2
	moved.Tenants = append([]policy.Tenant(nil), w.pol.Tenants...)
	moved.Tenants[0].Environments = []policy.Environment{
		{Name: "production", Identities: policy.Identities{URISAN: []string{"spiffe://acme/live-*"}}},
		{Name: "development", Identities: policy.Identities{URISAN: []string{"spiffe://acme/dev-*", "spiffe://acme/prod-*"}}},
	}
	if err := w.m.Apply(&moved); err != nil {
		t.Fatal(err)
	}
	if got, err := say(p, pr); err == nil {
		t.Fatalf("the production session of a certificate moved to development still answers: %q", got)
	}
	if !logged(w.logs, "certificate now maps to acme/development, not acme/production") {
		t.Errorf("no log line saying why the session ended:\n%s", w.logs.String())
	}
	// Resumed: the certificate is development's now, and rawprod has no
	// route for it.
	r, err := w.dial("rawprod", cc)
	if err == nil {
		if !r.ConnectionState().DidResume {
			t.Fatal("the second connection did not resume: the test proves nothing")
		}
		if got, err := say(r, bufio.NewReader(r)); err == nil {
			t.Fatalf("a resumed session of the moved certificate reached production: %q", got)
		}
	}

	// The development route of raw moves to production: its session ends.
	if got, err := say(d, dr); got != "dev:hi\n" {
		t.Fatalf("development session before the route moved: %q %v", got, err)
	}
	routes := *w.pol
	routes.Generation = 3
	routes.Tenants = moved.Tenants
	routes.Listeners = append([]policy.Listener(nil), w.pol.Listeners...)
	raw := &routes.Listeners[2]
	raw.Routes = append([]policy.Route(nil), raw.Routes...)
	raw.Routes[0].Backend = raw.Routes[1].Backend
	raw.Routes = raw.Routes[:1] // dev's backend, now production's route
	if err := w.m.Apply(&routes); err != nil {
		t.Fatal(err)
	}
	if err := w.srv.Apply(&routes); err != nil {
		t.Fatal(err)
	}
	if got, err := say(d, dr); err == nil {
		t.Fatalf("a development session still answers after its route moved to production: %q", got)
	}
	if !logged(w.logs, "session closed: its route was removed or changed by a reload", "environment=development") {
		t.Errorf("no log line for the moved route:\n%s", w.logs.String())
	}
}

// logged waits for a line of buf holding every one of parts.
func logged(buf *testkit.LogBuffer, parts ...string) bool {
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range strings.Split(buf.String(), "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gathered returns the value of the one series of reg whose name and
// labels are want (every label given), or -1.
func gathered(t *testing.T, reg *prometheus.Registry, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != want["__name__"] {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(want)-1 {
				continue
			}
			for _, lp := range m.GetLabel() {
				if want[lp.GetName()] != lp.GetValue() {
					continue series
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// upgrade opens a WebSocket tunnel through the ws listener with cert.
func (w *envWorld) upgrade(cert tls.Certificate) *wsTunnel {
	w.t.Helper()
	c, err := w.dial("ws", w.clientTLS(cert))
	if err != nil {
		w.t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	key := "dGhlIHNhbXBsZSBub25jZQ=="
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n", key)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != wsAccept(key) {
		w.t.Fatalf("upgrade: %v %v", resp, err)
	}
	c.SetDeadline(time.Time{})
	return &wsTunnel{c: c, br: br}
}

// TestEnvironmentWebSocket: an upgrade goes to the route of the
// certificate's environment, and the tunnel ends when a reload moves
// its route to another environment or its certificate to another.
func TestEnvironmentWebSocket(t *testing.T) {
	w := newEnvWorld(t)
	p, d := w.upgrade(w.prod), w.upgrade(w.dev)
	if got, err := p.say("hi"); got != "prod:acme:hi\n" {
		t.Fatalf("production tunnel: %q %v", got, err)
	}
	if got, err := d.say("hi"); got != "dev:acme:hi\n" {
		t.Fatalf("development tunnel: %q %v", got, err)
	}
	// The production route moves to development (and development's goes):
	// both tunnels lived on routes this generation no longer has.
	moved := *w.pol
	moved.Generation = 2
	moved.Listeners = append([]policy.Listener(nil), w.pol.Listeners...)
	ws := &moved.Listeners[5]
	ws.Routes = []policy.Route{ws.Routes[0]}
	ws.Routes[0].Environment = "development"
	if err := w.m.Apply(&moved); err != nil {
		t.Fatal(err)
	}
	if err := w.srv.Apply(&moved); err != nil {
		t.Fatal(err)
	}
	if err := p.waitClosed(); err != nil {
		t.Fatalf("production tunnel after its route moved to development: %v", err)
	}
	if err := d.waitClosed(); err != nil {
		t.Fatalf("development tunnel after its route went: %v", err)
	}
	// The development certificate now reaches the moved route; the
	// production certificate reaches none.
	n := w.upgrade(w.dev)
	if got, err := n.say("hi"); got != "prod:acme:hi\n" {
		t.Fatalf("development on the moved route: %q %v", got, err)
	}
	if code, _, err := w.get("ws", w.prod, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err == nil && code != http.StatusNotFound && code != http.StatusForbidden {
		t.Fatalf("production without a route on ws: %d", code)
	}
	// The development certificate moves to production: its tunnel ends.
	certMoved := moved
	certMoved.Generation = 3
	certMoved.Tenants = append([]policy.Tenant(nil), w.pol.Tenants...)
	certMoved.Tenants[0].Environments = []policy.Environment{
		{Name: "production", Identities: policy.Identities{URISAN: []string{"spiffe://acme/dev-*"}}},
		{Name: "development", Identities: policy.Identities{URISAN: []string{"spiffe://acme/prod-*"}}},
	}
	if err := w.m.Apply(&certMoved); err != nil {
		t.Fatal(err)
	}
	if err := n.waitClosed(); err != nil {
		t.Fatalf("tunnel of a certificate moved to production: %v", err)
	}
}
