package test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

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

	p := &inProc{dir: dir, serverCA: certstest.NewCA(t, "gatehouse")}
	tenantCA := certstest.NewCA(t, "acme")
	p.client = tenantCA.Client(t, "acme-cloud").TLS
	gwCA := certstest.NewCA(t, "tunnels")
	connCA := certstest.NewCA(t, "acme connectors")
	connLeaf := connCA.Client(t, "acme-connector")
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
`, p.gatewayAddr, gwCert.CertFile, gwCert.KeyFile, o.gatewayListener, tunnelAddr, tunCert.CertFile, tunCert.KeyFile, connCA.CertFile))
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
`, listener, tunnelAddr, gwCA.CertFile, connLeaf.CertFile, connLeaf.KeyFile, backendHost, backendPort))
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
