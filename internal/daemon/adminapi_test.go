package daemon

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// cutter is the daemon's session component as the admin API sees it: it
// records which scopes were drained and killed.
type cutter struct {
	recorder
	mu     sync.Mutex
	killed []string
	drains []string
}

func (c *cutter) Sessions() SessionCutter { return c }
func (c *cutter) Kill(tenant, env string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.killed = append(c.killed, tenant+"/"+env)
	return 1
}

func (c *cutter) Drain(tenant, env string, _ time.Duration) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drains = append(c.drains, tenant+"/"+env)
	return 1
}

// adminLab is a daemon with two tenants (acme, globex), a feed, grants to
// the unix user nobody (viewer of acme) and to admin certificates, and
// some of each tenant's counters, certificates and access log lines.
type adminLab struct {
	d        *Daemon
	dir      string
	sock     string
	url      string
	serverCA *certstest.CA
	adminCA  *certstest.CA
	crl      string                     // the admin CA's CRL file
	certs    map[string]*certstest.Leaf // by common name
	cut      *cutter
}

func startAdminLab(t *testing.T) *adminLab { t.Helper(); return startAdminLabWith(t, "") }

// startAdminLabWith starts the lab with extra keys in its access section
// (indented two spaces), such as an audit_log.
func startAdminLabWith(t *testing.T, accessExtra string) *adminLab {
	t.Helper()
	path, _, _ := feedConfig(t)
	dir := filepath.Dir(path)
	l := &adminLab{dir: dir, sock: filepath.Join(dir, "admin.sock"), serverCA: certstest.NewCA(t, "admin server"),
		adminCA: certstest.NewCA(t, "admin ca"), certs: map[string]*certstest.Leaf{}, cut: &cutter{recorder: recorder{name: "proxy"}}}
	for _, cn := range []string{"ops-admin", "feed-bot", "acme-viewer", "acme-admin", "stranger"} {
		l.certs[cn] = l.adminCA.Client(t, cn)
	}
	l.crl = l.adminCA.CRL(t, filepath.Join(dir, "admin-ca.crl"), time.Now().Add(time.Hour))
	srv := l.serverCA.Server(t, "localhost", "127.0.0.1")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	cfg := strings.Replace(string(b), "tenants: [{id: acme, client_ca: "+dir+"/ca.pem}]",
		"tenants: [{id: acme, client_ca: "+dir+"/ca.pem}, {id: globex, client_ca: "+dir+"/ca.pem}]", 1)
	cfg = strings.Replace(cfg, `routes: [{tenant: acme, backend: "http://127.0.0.1:1"}]}`,
		`routes: [{tenant: acme, backend: "http://127.0.0.1:1"}, {tenant: globex, host: globex.example, backend: "http://127.0.0.1:2"}]}`, 1)
	cfg += fmt.Sprintf(`
access:
%[5]s  https: {listen: "%[1]s", server_cert: %[2]s, server_key: %[3]s}
  grants:
    - {role: viewer, scope: "tenant:acme", users: [nobody]}
    - role: admin
      scope: global
      certificates: [{client_ca: %[4]s, crl: %[6]s, identities: {cn: [ops-admin]}}]
    - role: publisher
      scope: global
      certificates: [{client_ca: %[4]s, crl: %[6]s, identities: {cn: [feed-bot]}}]
    - role: viewer
      scope: "tenant:acme"
      certificates: [{client_ca: %[4]s, crl: %[6]s, identities: {cn: [acme-viewer]}}]
    - role: admin
      scope: "tenant:acme"
      certificates: [{client_ca: %[4]s, crl: %[6]s, identities: {cn: [acme-admin]}}]
`, addr, srv.CertFile, srv.KeyFile, l.adminCA.CertFile, accessExtra, l.crl)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var access *slog.Logger
	d, err := New(Options{ConfigPath: path, Logger: quietLogger(), Build: func(env *Env) ([]Component, error) {
		access = env.AccessLog
		return []Component{l.cut}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	// Each tenant's traces: counters, a CA's expiry, access log lines.
	hs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gatehouse_tls_handshakes_total", Help: "test"}, []string{"listener", "tenant", "result"})
	exp := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gatehouse_cert_expiry_timestamp_seconds", Help: "test"}, []string{"kind", "name"})
	d.Registry().MustRegister(hs, exp)
	for _, tenant := range []string{"acme", "globex"} {
		hs.WithLabelValues("web", tenant, "ok").Add(3)
		exp.WithLabelValues("tenant_ca", tenant).Set(float64(time.Now().Add(48 * time.Hour).Unix()))
		access.Info("request", "listener", "web", "tenant", tenant, "route", tenant+"-route", "status", 200)
	}
	exp.WithLabelValues("server", "web").Set(float64(time.Now().Add(24 * time.Hour).Unix()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	l.d, l.url = d, "https://"+addr
	waitFor(t, "the admin endpoints", func() bool {
		_, err1 := os.Stat(l.sock)
		c, err2 := net.Dial("tcp", addr)
		if err2 == nil {
			c.Close()
		}
		return err1 == nil && err2 == nil
	})
	return l
}

// client is an HTTPS admin client presenting cert (none when nil).
func (l *adminLab) client(cert *certstest.Leaf) *http.Client {
	tc := &tls.Config{RootCAs: l.serverCA.Pool(), ServerName: "localhost"}
	if cert != nil {
		tc.Certificates = []tls.Certificate{cert.TLS}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
}

func (l *adminLab) do(t *testing.T, c *http.Client, method, path string) (int, string, error) {
	t.Helper()
	req, _ := http.NewRequest(method, l.url+path, nil)
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// audit reads the audit log back.
func (l *adminLab) audit(t *testing.T) []map[string]any {
	t.Helper()
	f, err := os.Open(filepath.Join(l.dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// TestTenantViewerSeesOnlyItsTenant walks every endpoint of the admin API
// with a tenant viewer (acme) on both transports: no answer names the
// other tenant (globex), its routes, counters or certificates, actions
// beyond a viewer's are refused with the reason, and asking about globex
// is answered exactly as asking about a tenant that does not exist.
func TestTenantViewerSeesOnlyItsTenant(t *testing.T) {
	netns.RequirePriv(t)
	curl := netns.RequireTool(t, "curl", "curl")
	l := startAdminLab(t)
	for _, d := range []string{filepath.Dir(l.dir), l.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if fi, err := os.Stat(l.sock); err != nil || fi.Mode().Perm() != 0o666 {
		t.Fatalf("admin socket with a grant to nobody: %v %v, want 0666", fi.Mode(), err)
	}
	viaHTTPS := func(method, path string) (int, string) {
		code, body, err := l.do(t, l.client(l.certs["acme-viewer"]), method, path)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return code, body
	}
	// nobody (uid 65534) through curl, a real process with its own
	// credentials.
	viaUnix := func(method, path string) (int, string) {
		cmd := exec.Command(curl, "-sS", "--max-time", "10", "-X", method, "-w", "\n%{http_code}", "--unix-socket", l.sock, "http://gatehouse"+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl as nobody %s %s: %v\n%s", method, path, err, out)
		}
		s := strings.TrimRight(string(out), "\n")
		i := strings.LastIndex(s, "\n")
		var code int
		fmt.Sscan(s[i+1:], &code)
		return code, s[:max(i, 0)]
	}
	for name, ask := range map[string]func(string, string) (int, string){"https": viaHTTPS, "unix": viaUnix} {
		for _, tc := range []struct {
			method, path string
			code         int
			has          string // what the answer must say
		}{
			{"GET", "/status", 200, `"id": "acme"`},
			{"GET", "/metrics", 200, `tenant="acme"`},
			{"GET", "/certificates", 200, `"name": "acme"`},
			{"GET", "/access-log", 200, `"tenant":"acme"`},
			{"GET", "/ready", 200, "ready"},
			{"POST", "/feeds/refresh", 403, "refused: feed_refresh on global needs role publisher at global scope"},
			{"POST", "/feeds/accept?feed=lab", 403, "refused: feed_accept on global needs role publisher at global scope"},
			{"POST", "/reload", 403, "refused: reload on global needs role admin at global scope"},
			{"POST", "/teardown?confirm=yes", 403, "refused: teardown on global needs role admin at global scope"},
			{"POST", "/sessions/drain?scope=tenant:acme", 403, "needs role publisher at a scope covering tenant:acme"},
			{"POST", "/sessions/kill?scope=tenant:acme", 403, "needs role admin at a scope covering tenant:acme"},
			{"POST", "/sessions/kill?scope=tenant:globex", 403, "needs role admin at a scope covering tenant:globex"},
			{"POST", "/sessions/drain?scope=tenant:globex", 403, "needs role publisher"},
		} {
			code, body := ask(tc.method, tc.path)
			if code != tc.code || !strings.Contains(body, tc.has) {
				t.Errorf("%s %s %s: %d, want %d with %q:\n%s", name, tc.method, tc.path, code, tc.code, tc.has, body)
			}
			asked := strings.Contains(tc.path, "globex")
			if !asked && (strings.Contains(body, "globex") || strings.Contains(body, "127.0.0.1:2")) {
				t.Errorf("%s %s %s shows the other tenant:\n%s", name, tc.method, tc.path, body)
			}
			if asked {
				// The same request about a tenant that does not exist
				// must be answered alike: nothing tells globex exists.
				code2, body2 := ask(tc.method, strings.ReplaceAll(tc.path, "globex", "initech"))
				if code2 != code || strings.ReplaceAll(body2, "initech", "globex") != body {
					t.Errorf("%s %s %s: globex answered unlike a tenant that does not exist:\n%d %s\n%d %s", name, tc.method, tc.path, code, body, code2, body2)
				}
			}
		}
	}
	if len(l.cut.killed)+len(l.cut.drains) != 0 {
		t.Errorf("a viewer's refused requests reached the sessions: %v %v", l.cut.killed, l.cut.drains)
	}
	// The refusals are in the audit log, with who and why.
	var refused int
	for _, e := range l.audit(t) {
		if e["result"] == "refused" && e["action"] == "reload" && e["user"] == "nobody" && e["role"] == "viewer" && e["scope"] == "tenant:acme" &&
			strings.Contains(e["reason"].(string), "needs role admin") {
			refused++
		}
	}
	if refused != 1 {
		t.Errorf("nobody's refused reload in the audit log %d times, want 1", refused)
	}
}

// TestAdminRoles: over real mutual TLS, a global admin reloads; a
// publisher refreshes feeds but may not reload or kill; a tenant admin
// kills and drains its own tenant's sessions and no other's; every
// action is in the audit log with its result.
func TestAdminRoles(t *testing.T) {
	l := startAdminLab(t)
	for _, tc := range []struct {
		cert, method, path string
		code               int
		has                string
	}{
		{"ops-admin", "POST", "/reload", 200, `"generation": `},
		{"ops-admin", "GET", "/status", 200, `"id": "globex"`},
		{"feed-bot", "POST", "/feeds/refresh?feed=lab", 200, `"feed": "lab"`},
		{"feed-bot", "POST", "/feeds/accept?feed=lab", 409, "no update in quarantine"},
		{"feed-bot", "POST", "/reload", 403, "refused: reload on global needs role admin at global scope; certificate \"CN=feed-bot\""},
		{"feed-bot", "POST", "/sessions/kill?scope=tenant:acme", 403, "needs role admin"},
		{"feed-bot", "POST", "/sessions/drain?scope=tenant:acme&grace=5s", 200, `"sessions": 1`},
		{"acme-admin", "POST", "/sessions/kill?scope=tenant:acme", 200, `"scope": "tenant:acme"`},
		{"acme-admin", "POST", "/sessions/kill?scope=tenant:acme/default", 200, `"scope": "tenant:acme/default"`},
		{"acme-admin", "POST", "/sessions/kill?scope=tenant:globex", 403, "has admin at tenant:acme"},
		{"acme-admin", "POST", "/sessions/kill?scope=global", 400, "per tenant or environment"},
		{"acme-admin", "POST", "/feeds/refresh", 403, "needs role publisher at global scope"},
		{"acme-admin", "POST", "/reload", 403, "needs role admin at global scope"},
		{"acme-admin", "POST", "/teardown?confirm=yes", 403, "refused: teardown on global needs role admin at global scope; certificate \"CN=acme-admin\""},
		{"feed-bot", "POST", "/teardown?confirm=yes", 403, "refused: teardown on global needs role admin at global scope; certificate \"CN=feed-bot\""},
		{"ops-admin", "POST", "/sessions/kill?scope=tenant:initech", 404, "no such tenant"},
		{"stranger", "GET", "/status", 403, "refused: status on global needs role viewer"},
	} {
		code, body, err := l.do(t, l.client(l.certs[tc.cert]), tc.method, tc.path)
		if err != nil || code != tc.code || !strings.Contains(body, tc.has) {
			t.Errorf("%s %s %s: %d %v, want %d with %q:\n%s", tc.cert, tc.method, tc.path, code, err, tc.code, tc.has, body)
		}
	}
	l.cut.mu.Lock()
	if got := strings.Join(l.cut.killed, " "); got != "acme/ acme/default" {
		t.Errorf("sessions killed: %q, want acme's only", got)
	}
	if got := strings.Join(l.cut.drains, " "); got != "acme/" {
		t.Errorf("sessions drained: %q", got)
	}
	l.cut.mu.Unlock()

	want := map[string]string{"reload": "ok", "feed_refresh": "ok", "feed_accept": "error", "sessions_kill": "ok", "sessions_drain": "ok"}
	seen := map[string]bool{}
	for _, e := range l.audit(t) {
		if e["transport"] != "https" {
			t.Errorf("audit line without its transport: %v", e)
		}
		if r, ok := want[e["action"].(string)]; ok && e["result"] == r {
			seen[e["action"].(string)] = true
		}
		if e["action"] == "reload" && e["result"] == "refused" && e["subject"] == "CN=feed-bot" && (e["role"] != "publisher" || e["scope"] != "global" || e["fingerprint_sha256"] == "") {
			t.Errorf("refused reload audited as %v", e)
		}
		if e["action"] == "sessions_drain" && (e["args"].(map[string]any)["grace"] != "5s" || e["target"] != "tenant:acme") {
			t.Errorf("drain audited as %v", e)
		}
	}
	for a := range want {
		if !seen[a] {
			t.Errorf("no %s with result %s in the audit log", a, want[a])
		}
	}
}

// TestAdminCertificatesRefused: a certificate the admin CA did not issue
// (even with a granted name), an expired one, and none at all fail the
// handshake of the admin endpoint.
func TestAdminCertificatesRefused(t *testing.T) {
	l := startAdminLab(t)
	before := l.d.current.Load().Generation
	forger := certstest.NewCA(t, "admin ca") // same name, another key
	expired := l.adminCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "ops-admin"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		NotBefore:   time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	serverAuth := l.adminCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "ops-admin"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	for name, cert := range map[string]*certstest.Leaf{
		"forged":      forger.Client(t, "ops-admin"),
		"expired":     expired,
		"server only": serverAuth,
		"none":        nil,
	} {
		code, body, err := l.do(t, l.client(cert), "POST", "/reload")
		if err == nil {
			t.Errorf("%s certificate: answered %d %s", name, code, body)
		}
	}
	if g := l.d.current.Load().Generation; g != before {
		t.Errorf("generation %d after refused reloads", g)
	}
}

// TestGrantsFollowReload: a grant removed by a reload no longer allows
// anything, also on a connection opened before it; a configuration whose
// grants name an unknown user is refused whole and the grants in force
// stay.
func TestGrantsFollowReload(t *testing.T) {
	l := startAdminLab(t)
	acme, ops := l.client(l.certs["acme-admin"]), l.client(l.certs["ops-admin"])
	if code, body, err := l.do(t, acme, "POST", "/sessions/kill?scope=tenant:acme"); err != nil || code != 200 {
		t.Fatalf("acme-admin before the reload: %d %v %s", code, err, body)
	}
	path := filepath.Join(l.dir, "gatehouse.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(b), "users: [nobody]", "users: [no-such-user-gatehouse]", 1)
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, body, _ := l.do(t, ops, "POST", "/reload"); code != 409 || !strings.Contains(body, "no-such-user-gatehouse") {
		t.Errorf("reload naming an unknown user: %d %s", code, body)
	}
	if code, _, _ := l.do(t, acme, "POST", "/sessions/kill?scope=tenant:acme"); code != 200 {
		t.Errorf("acme-admin after a refused reload: %d, want its grant still in force", code)
	}
	i := strings.Index(string(b), "    - role: admin\n      scope: \"tenant:acme\"")
	if i < 0 {
		t.Fatal("the acme-admin grant is not in the lab's configuration")
	}
	if err := os.WriteFile(path, b[:i], 0o600); err != nil {
		t.Fatal(err)
	}
	if code, body, _ := l.do(t, ops, "POST", "/reload"); code != 200 {
		t.Fatalf("reload without acme-admin's grant: %d %s", code, body)
	}
	if code, body, _ := l.do(t, acme, "POST", "/sessions/kill?scope=tenant:acme"); code != 403 || !strings.Contains(body, "has no grant") {
		t.Errorf("acme-admin after its grant was removed: %d %s", code, body)
	}
}
