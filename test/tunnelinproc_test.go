package test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
)

// inProc is a gateway and a connector in this process, on loopback, the
// kernel layers off, in front of an HTTPS backend that answers with the
// request's protocol and path: client → TLS at the gateway → tunnel →
// connector's proxy → backend.
type inProc struct {
	gateway, connector *daemon.Daemon
	gwLog, connLog     *testkit.LogBuffer
	connCA, gwCA       *certstest.CA
	connCert, connKey  string // the connector's credential files
	gwCAFile           string // the gateway CA the connector pins
	gatewayAddr        string
	serverCA           *certstest.CA
	client             tls.Certificate
	dir                string
}

// connectorListener is the connector's listener line; %s are its routes.
type inProcOpts struct {
	gatewayListener   string // extra keys of the gateway's listener, e.g. ", http2: true"
	connectorListener func(routes string, cert, key string) string
}

func startInProcPair(t testing.TB, o inProcOpts) *inProc {
	t.Helper()
	dir := t.TempDir()
	backendCA := certstest.NewCA(t, "internal")
	backendAddr := testkit.FreeLoopbackAddr(t)
	backendHost, backendPort, _ := net.SplitHostPort(backendAddr)
	ln, err := tls.Listen("tcp", backendAddr, &tls.Config{Certificates: []tls.Certificate{backendCA.Server(t, backendHost).TLS}, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Proto, r.URL.Path, body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	p := &inProc{dir: dir, serverCA: certstest.NewCA(t, "gatehouse"), gwLog: &testkit.LogBuffer{}, connLog: &testkit.LogBuffer{}}
	tenantCA := certstest.NewCA(t, "acme")
	p.client = tenantCA.Client(t, "acme-cloud").TLS
	gwCA := certstest.NewCA(t, "tunnels")
	connCA := certstest.NewCA(t, "acme connectors")
	connLeaf := connCA.Client(t, "acme-connector")
	p.connCA, p.gwCA = connCA, gwCA
	// Copies, so a test may rewrite them.
	p.connCert, p.connKey, p.gwCAFile = copyFile(t, connLeaf.CertFile), copyFile(t, connLeaf.KeyFile), copyFile(t, gwCA.CertFile)
	common := func(name string) string {
		return fmt.Sprintf(`state_dir: %s/%s
admin_socket: ""
shutdown_grace: 1s
enforcement: {xdp: "off", nftables: false}
metrics: {listen: %q}
tenants: [{id: acme, client_ca: %s}]
`, dir, name, testkit.FreeLoopbackAddr(t), tenantCA.CertFile)
	}
	route := fmt.Sprintf(`[{tenant: acme, backend: "https://%s", backend_ca: %s}]`, backendAddr, backendCA.CertFile)
	p.gatewayAddr = testkit.FreeLoopbackAddr(t)
	tunnelAddr := testkit.FreeLoopbackAddr(t)
	gh, _, _ := net.SplitHostPort(p.gatewayAddr)
	th, _, _ := net.SplitHostPort(tunnelAddr)
	gwCert := p.serverCA.Server(t, "gate.example", gh)
	tunCert := gwCA.Server(t, th)
	p.gateway = startInProcess(t, dir, "gateway", common("gateway")+fmt.Sprintf(`listeners:
  - {name: web, listen: %q, protocol: https, server_cert: %s, server_key: %s%s}
gateway:
  listen: %q
  server_cert: %s
  server_key: %s
  connectors: [{tenant: acme, client_ca: %s}]
`, p.gatewayAddr, gwCert.CertFile, gwCert.KeyFile, o.gatewayListener, tunnelAddr, tunCert.CertFile, tunCert.KeyFile, connCA.CertFile), p.gwLog)
	listener := fmt.Sprintf(`  - {name: web, listen: %q, protocol: https, server_cert: %s, server_key: %s, routes: %s}`,
		testkit.FreeLoopbackAddr(t), gwCert.CertFile, gwCert.KeyFile, route)
	if o.connectorListener != nil {
		listener = o.connectorListener(route, gwCert.CertFile, gwCert.KeyFile)
	}
	p.connector = startInProcess(t, dir, "connector", common("connector")+fmt.Sprintf(`listeners:
%s
connector:
  tenant: acme
  tunnels: 2
  gateways: [%q]
  gateway_ca: %s
  cert: %s
  key: %s
  allow: ["%s/32:%s"]
`, listener, tunnelAddr, p.gwCAFile, p.connCert, p.connKey, backendHost, backendPort), p.connLog)
	// Ready means one tunnel up; wait for both, as the gateway sees them.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(fmt.Sprint(p.gateway.Status().Tunnels), "{acme 2}") {
		if time.Now().After(deadline) {
			t.Fatalf("gateway tunnels: %v, want acme 2", p.gateway.Status().Tunnels)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

func copyFile(t testing.TB, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

// waitLog waits until the log holds want.
func waitLog(t testing.TB, l *testkit.LogBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(l.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %q:\n%s", want, l.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitTunnelsUp waits until the gateway has n tunnels of acme up.
func (p *inProc) waitTunnelsUp(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		up := 0
		for _, tu := range p.gateway.Status().Tunnels {
			if tu.Peer == "acme" {
				up = tu.Up
			}
		}
		if up == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway: %d tunnels of acme up, want %d\n%s", up, n, p.connLog.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get fetches path through the gateway.
func (p *inProc) get(t testing.TB, path string) (int, string) {
	t.Helper()
	resp, err := p.httpClient(false).Get("https://" + p.gatewayAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// httpClient is a tenant client of the gateway; h2 offers HTTP/2.
func (p *inProc) httpClient(h2 bool) *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: h2,
		TLSClientConfig: &tls.Config{RootCAs: p.serverCA.Pool(), Certificates: []tls.Certificate{p.client}}}}
}

// A gateway's status lists its listeners with the route each tenant with
// connectors has down its tunnels, and how many are up.
func TestGatewayStatusListeners(t *testing.T) {
	p := startInProcPair(t, inProcOpts{})
	resp, err := p.httpClient(false).Get("https://" + p.gatewayAddr + "/x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "HTTP/1.1 /x " {
		t.Fatalf("through the tunnel: %d %q", resp.StatusCode, b)
	}
	st := p.gateway.Status()
	var found bool
	for _, r := range st.Listeners {
		if r.Listener == "web" && r.Listen == p.gatewayAddr && r.Tenant == "acme" && len(r.Backends) == 1 && r.Backends[0] == "tunnel: acme's connectors (2 up)" {
			found = true
		}
	}
	if !found {
		t.Fatalf("gateway status listeners: %+v, want web → acme down its 2 tunnels", st.Listeners)
	}
}

// A running connector reads its certificate, key and gateway CA again
// when the files change: a file that does not load keeps the old
// credentials (the tunnels and sessions go on) and says why; a renewed
// certificate under the same gateway CA keeps the tunnels up; a gateway
// CA that does not sign the gateway's certificate closes them.
func TestConnectorCredentialsReload(t *testing.T) {
	p := startInProcPair(t, inProcOpts{})
	if code, body := p.get(t, "/before"); code != 200 {
		t.Fatalf("before: %d %s", code, body)
	}
	good, _ := os.ReadFile(p.connCert)
	if err := os.WriteFile(p.connCert, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitLog(t, p.connLog, "connector credentials not reloaded, the old ones stay in force")
	p.waitTunnelsUp(t, 2)
	if code, body := p.get(t, "/bad-file"); code != 200 {
		t.Fatalf("with a bad certificate file: %d %s", code, body)
	}
	if err := os.WriteFile(p.connCert, good, 0o600); err != nil {
		t.Fatal(err)
	}

	renewed := p.connCA.Client(t, "acme-connector-renewed")
	for src, dst := range map[string]string{renewed.CertFile: p.connCert, renewed.KeyFile: p.connKey} {
		b, _ := os.ReadFile(src)
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	waitLog(t, p.connLog, "fingerprint="+certs.FingerprintSHA256(renewed.Cert))
	p.waitTunnelsUp(t, 2)
	if code, body := p.get(t, "/renewed"); code != 200 {
		t.Fatalf("after a renewal: %d %s", code, body)
	}

	other := certstest.NewCA(t, "not the gateway's CA")
	b, _ := os.ReadFile(other.CertFile)
	if err := os.WriteFile(p.gwCAFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	waitLog(t, p.connLog, "tunnels_closed=2")
	p.waitTunnelsUp(t, 0)
}
