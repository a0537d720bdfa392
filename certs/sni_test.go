package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// sniWorld is the test PKI plus extra certificates on the web listener:
// a for two names, b for one name and one name under the wildcard, and a
// wildcard.
type sniWorld struct {
	*pki
	a, b, wild *certstest.Leaf
}

func newSNIWorld(t testing.TB) *sniWorld {
	t.Helper()
	w := &sniWorld{pki: newPKI(t)}
	w.a = w.serverCA.Server(t, "a.example", "alt-a.example")
	w.b = w.serverCA.Server(t, "b.example", "special.tenants.example")
	w.wild = w.serverCA.Server(t, "*.tenants.example")
	w.policy.Listeners[0].ExtraCerts = []policy.CertKey{
		{Cert: w.a.CertFile, Key: w.a.KeyFile},
		{Cert: w.b.CertFile, Key: w.b.KeyFile},
		{Cert: w.wild.CertFile, Key: w.wild.KeyFile},
	}
	return w
}

// served runs a real handshake on the listener with the SNI name (none for
// an IP address: clients never send one) and returns the server
// certificate the client got. verify=false lets the client accept a
// certificate for another name, to see what an unknown name is served.
func (w *sniWorld) served(t *testing.T, m *Manager, listener, sni string, verify bool) *x509.Certificate {
	t.Helper()
	srv, err := m.TLSConfig(listener)
	if err != nil {
		t.Fatal(err)
	}
	cc := w.clientConfig(w.acme)
	cc.ServerName = sni
	cc.InsecureSkipVerify = !verify
	r := handshake(t, srv, cc, false)
	if r.serverErr != nil {
		t.Fatalf("SNI %q on %s: %v", sni, listener, r.serverErr)
	}
	wantSNI := sni
	if strings.Trim(sni, "0123456789.") == "" {
		wantSNI = ""
	}
	if got := r.server.ServerName; got != strings.TrimSuffix(strings.ToLower(wantSNI), ".") {
		t.Fatalf("server saw SNI %q, client meant %q", got, wantSNI)
	}
	return r.client.PeerCertificates[0]
}

// TestSNIHandshakes: over real TLS, each name gets its certificate, exact
// before wildcard, and unknown names or no SNI get the default.
func TestSNIHandshakes(t *testing.T) {
	w := newSNIWorld(t)
	m := newManager(t, Config{}, w.policy)
	for _, tc := range []struct {
		listener, sni string
		verify        bool
		want          *certstest.Leaf
	}{
		{"web", "a.example", true, w.a},
		{"web", "alt-a.example", true, w.a},
		{"web", "b.example", true, w.b},
		{"web", "acme.tenants.example", true, w.wild},
		{"web", "globex.tenants.example", true, w.wild},
		{"web", "special.tenants.example", true, w.b}, // exact beats the wildcard
		{"web", "gw.example", true, w.server},
		{"web", "127.0.0.1", true, w.server}, // no SNI at all
		{"web", "unknown.example", false, w.server},
		{"web", "deep.acme.tenants.example", false, w.server}, // a wildcard covers one label
		{"web", "tenants.example", false, w.server},
		{"mainframe", "a.example", false, w.server}, // extra certificates are per listener
		{"mainframe", "127.0.0.1", true, w.server},
	} {
		got := w.served(t, m, tc.listener, tc.sni, tc.verify)
		if !got.Equal(tc.want.Cert) {
			t.Errorf("%s SNI %q: served %v, want %v", tc.listener, tc.sni, got.DNSNames, tc.want.Cert.DNSNames)
		}
	}
}

// TestSNISelection covers the name normalisation and the wildcard's reach
// without handshakes.
func TestSNISelection(t *testing.T) {
	ca := certstest.NewCA(t, "srv")
	def := ca.Server(t, "gw.example")
	wild := ca.Server(t, "*.Tenants.example")
	mixed := ca.Server(t, "Mixed.Example.")
	ls := &listenerState{certs: []serverCert{
		{tls: &def.TLS, file: "def"}, {tls: &wild.TLS, file: "wild"}, {tls: &mixed.TLS, file: "mixed"}}}
	if err := ls.index(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sni  string
		want *certstest.Leaf
	}{
		{"", def},
		{"gw.example", def},
		{"acme.tenants.example", wild},
		{"ACME.Tenants.Example.", wild},
		{"mixed.example", mixed},
		{"MIXED.example.", mixed},
		{"a.b.tenants.example", def},
		{"tenants.example", def},
		{".tenants.example", def},
		{"unknown.example", def},
	} {
		got, err := ls.certificate(&tls.ClientHelloInfo{ServerName: tc.sni})
		if err != nil {
			t.Fatal(err)
		}
		if got.Leaf != tc.want.Cert {
			t.Errorf("SNI %q got %v, want %v", tc.sni, got.Leaf.DNSNames, tc.want.Cert.DNSNames)
		}
	}
}

// TestExtraCertErrors: a bad extra certificate refuses the whole
// generation with an error naming the listener and the file(s), and the
// previous generation keeps serving.
func TestExtraCertErrors(t *testing.T) {
	w := newSNIWorld(t)
	m := newManager(t, Config{}, w.policy)
	dupA := w.serverCA.Server(t, "other.example", "A.example")
	dupDefault := w.serverCA.Server(t, "gw.example")
	dupWild := w.serverCA.Server(t, "x.example", "*.tenants.example")
	ipOnly := w.serverCA.Server(t, "192.0.2.7")
	missing := filepath.Join(t.TempDir(), "gone.pem")
	for _, tc := range []struct {
		name  string
		extra policy.CertKey
		is    error
		files []string // named in the error
	}{
		{"exact name twice", policy.CertKey{Cert: dupA.CertFile, Key: dupA.KeyFile}, ErrSNIConflict,
			[]string{w.a.CertFile, dupA.CertFile, `"a.example"`}},
		{"name of the default", policy.CertKey{Cert: dupDefault.CertFile, Key: dupDefault.KeyFile}, ErrSNIConflict,
			[]string{w.server.CertFile, dupDefault.CertFile}},
		{"wildcard twice", policy.CertKey{Cert: dupWild.CertFile, Key: dupWild.KeyFile}, ErrSNIConflict,
			[]string{w.wild.CertFile, dupWild.CertFile, `"*.tenants.example"`}},
		{"no DNS name", policy.CertKey{Cert: ipOnly.CertFile, Key: ipOnly.KeyFile}, ErrNoDNSNames,
			[]string{ipOnly.CertFile}},
		{"missing file", policy.CertKey{Cert: missing, Key: w.a.KeyFile}, fs.ErrNotExist,
			[]string{missing}},
		{"key of another certificate", policy.CertKey{Cert: dupA.CertFile, Key: w.b.KeyFile}, nil,
			[]string{dupA.CertFile, w.b.KeyFile}},
		{"no key", policy.CertKey{Cert: dupA.CertFile}, ErrNoServerCert, nil},
		{"same file twice", policy.CertKey{Cert: w.a.CertFile, Key: w.a.KeyFile}, ErrDuplicate,
			[]string{w.a.CertFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := clonePolicy(w.policy)
			p.Generation = 2
			web := &p.Listeners[0]
			web.ExtraCerts = append(append([]policy.CertKey(nil), web.ExtraCerts...), tc.extra)
			err := m.Apply(p)
			if err == nil {
				t.Fatal("Apply succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v, want %v", err, tc.is)
			}
			for _, s := range append([]string{`listener "web"`}, tc.files...) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name %s", err, s)
				}
			}
			if g := m.state.Load().policy.Generation; g != 1 {
				t.Errorf("generation %d in force after a refused Apply", g)
			}
			if got := w.served(t, m, "web", "a.example", true); !got.Equal(w.a.Cert) {
				t.Errorf("after a refused Apply a.example is served %v", got.DNSNames)
			}
		})
	}
}

// serverExpiry returns the kind="server" series of
// gatehouse_cert_expiry_timestamp_seconds by name.
func serverExpiry(t testing.TB, m *Manager) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "gatehouse_cert_expiry_timestamp_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range mt.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["kind"] == "server" {
				out[labels["name"]] = mt.GetGauge().GetValue()
			}
		}
	}
	return out
}

func TestExtraCertExpiryMetrics(t *testing.T) {
	w := newSNIWorld(t)
	m := newManager(t, Config{}, w.policy)
	want := map[string]float64{
		"web":                   float64(w.server.Cert.NotAfter.Unix()),
		"web/a.example":         float64(w.a.Cert.NotAfter.Unix()),
		"web/b.example":         float64(w.b.Cert.NotAfter.Unix()),
		"web/*.tenants.example": float64(w.wild.Cert.NotAfter.Unix()),
		"mainframe":             float64(w.server.Cert.NotAfter.Unix()),
	}
	got := serverExpiry(t, m)
	if len(got) != len(want) {
		t.Errorf("server series %v, want %v", got, want)
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("server/%s = %v, want %v", name, got[name], v)
		}
	}
}

// TestExtraCertReload: an extra certificate replaced on disk is picked up
// by the watcher (handshakes and the expiry metric), the others stay; a
// key that does not fit is refused on reload, naming the file, and the
// loaded pair keeps serving.
func TestExtraCertReload(t *testing.T) {
	w := newSNIWorld(t)
	m := newManager(t, Config{PollInterval: 10 * time.Millisecond}, w.policy)
	changed := make(chan struct{}, 8)
	m.OnChange(func() { changed <- struct{}{} })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Watch(ctx) }()
	stop := func() { cancel(); <-done }
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()

	next := w.serverCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "b.example"},
		DNSNames: []string{"b.example"}, NotAfter: time.Now().Add(72 * time.Hour).Truncate(time.Second),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	keyBefore := w.b.KeyFile + ".old"
	copyFile(t, w.b.KeyFile, keyBefore)
	copyFile(t, next.CertFile, w.b.CertFile)
	copyFile(t, next.KeyFile, w.b.KeyFile)
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no reload after the extra certificate changed")
	}
	if got := w.served(t, m, "web", "b.example", true); !got.Equal(next.Cert) {
		t.Fatalf("b.example served serial %s, want the new %s", got.SerialNumber, next.Cert.SerialNumber)
	}
	// special.tenants.example was only on the old b: now the wildcard's.
	if got := w.served(t, m, "web", "special.tenants.example", true); !got.Equal(w.wild.Cert) {
		t.Errorf("special.tenants.example served %v, want the wildcard", got.DNSNames)
	}
	if got := w.served(t, m, "web", "a.example", true); !got.Equal(w.a.Cert) {
		t.Errorf("a.example served %v after b changed", got.DNSNames)
	}
	if got := serverExpiry(t, m)["web/b.example"]; got != float64(next.Cert.NotAfter.Unix()) {
		t.Errorf("web/b.example expiry %v, want %v", got, next.Cert.NotAfter.Unix())
	}

	// Without the watcher, so that the refusal is Reload's.
	stop()
	stopped = true
	copyFile(t, keyBefore, w.b.KeyFile)
	err := m.Reload()
	if err == nil || !strings.Contains(err.Error(), w.b.CertFile) || !strings.Contains(err.Error(), `listener "web"`) {
		t.Fatalf("reload with a key that does not fit: %v", err)
	}
	if got := w.served(t, m, "web", "b.example", true); !got.Equal(next.Cert) {
		t.Errorf("after a refused reload b.example served %s, want %s", got.SerialNumber, next.Cert.SerialNumber)
	}
}
