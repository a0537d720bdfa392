package test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
)

// BenchmarkConnectorPath compares, on loopback and in one process, the
// appliance's path (client → TLS → HTTPS proxy → backend) with the
// gateway and connector's (client → TLS at the gateway → tunnel →
// connector's HTTPS proxy → backend): a 1 KiB request answered with
// 1 KiB (p50 and p99), and an 8 MiB download. The kernel layers are off;
// they cost both paths the same. Run:
//
//	go test ./test -run XXX -bench ConnectorPath -benchtime 2000x
func BenchmarkConnectorPath(b *testing.B) {
	p := startBenchPaths(b, nil)
	bulk := p.bulk
	for _, path := range []struct{ name, addr string }{{"appliance", p.appliance}, {"tunnel", p.gateway}} {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: p.tls, MaxIdleConnsPerHost: 4}}
		base := "https://" + path.addr
		b.Run(path.name+"/1KiB", func(b *testing.B) {
			msg := bytes.Repeat([]byte("r"), 1<<10)
			lat := make([]time.Duration, 0, b.N)
			b.SetBytes(2 << 10)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				resp, err := c.Post(base+"/echo", "application/octet-stream", bytes.NewReader(msg))
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || n != int64(len(msg)) {
					b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
		b.Run(path.name+"/bulk", func(b *testing.B) {
			b.SetBytes(int64(bulk))
			for range b.N {
				resp, err := c.Get(base + "/bulk")
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if n != int64(bulk) {
					b.Fatalf("%d bytes", n)
				}
			}
		})
	}
}

// startInProcess runs a daemon in this process on the configuration and
// waits until it is ready.
func startInProcess(b testing.TB, dir, name, cfg string, logs io.Writer) *daemon.Daemon {
	b.Helper()
	// Its state_dir, dir/name, exists as the package's would.
	if err := os.MkdirAll(filepath.Join(dir, name), 0o700); err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	if logs != nil {
		logger = slog.New(slog.NewTextHandler(logs, nil))
	}
	d, err := daemon.New(daemon.Options{ConfigPath: path, Logger: logger})
	if err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	// done is closed when Run has returned, with its error in runErr: a
	// Run that ends early fails the test, and the cleanup does not wait
	// for a second value.
	done := make(chan struct{})
	var runErr error
	go func() { runErr = d.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(20 * time.Second)
	for len(d.NotReady()) > 0 {
		if time.Now().After(deadline) {
			b.Fatalf("%s not ready: %v", name, d.NotReady())
		}
		select {
		case <-done:
			b.Fatalf("%s: %v", name, runErr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return d
}

// benchPaths are an appliance and a gateway + connector pair in this
// process, on loopback, in front of one HTTPS backend; bulk is the size of
// the backend's /bulk answer, tls a tenant client's configuration.
type benchPaths struct {
	appliance, gateway string
	bulk               int
	tls                *tls.Config
}

// startBenchPaths starts them; connector, when not nil, runs the
// connector's configuration (written to a file) in a process of its own
// and returns once it is started.
func startBenchPaths(b testing.TB, connector func(cfgPath string)) *benchPaths {
	b.Helper()
	dir := b.TempDir()
	backendCA := certstest.NewCA(b, "internal")
	backendAddr := testkit.FreeLoopbackAddr(b)
	backendHost, _, _ := net.SplitHostPort(backendAddr)
	ln, err := tls.Listen("tcp", backendAddr, &tls.Config{Certificates: []tls.Certificate{backendCA.Server(b, backendHost).TLS}})
	if err != nil {
		b.Fatal(err)
	}
	bulk := bytes.Repeat([]byte("x"), 8<<20)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bulk" {
			w.Header().Set("Content-Length", strconv.Itoa(len(bulk)))
			w.Write(bulk)
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Write(body)
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })

	serverCA := certstest.NewCA(b, "gatehouse")
	tenantCA := certstest.NewCA(b, "acme")
	client := tenantCA.Client(b, "acme-cloud")
	gwCA := certstest.NewCA(b, "tunnels")
	connCA := certstest.NewCA(b, "acme connectors")
	connLeaf := connCA.Client(b, "acme-connector")
	common := func(name string) string {
		return fmt.Sprintf(`state_dir: %s/%s
admin_socket: ""
shutdown_grace: 1s
enforcement: {xdp: "off", nftables: false}
metrics: {listen: %q}
tenants: [{id: acme, client_ca: %s}]
limits: {connections: 2000, http: {in_flight_per_tenant: 2000}}
`, dir, name, testkit.FreeLoopbackAddr(b), tenantCA.CertFile)
	}
	route := fmt.Sprintf(`[{tenant: acme, backend: "https://%s", backend_ca: %s}]`, backendAddr, backendCA.CertFile)

	applianceAddr := testkit.FreeLoopbackAddr(b)
	ah, _, _ := net.SplitHostPort(applianceAddr)
	appCert := serverCA.Server(b, "gate.example", ah)
	startInProcess(b, dir, "appliance", common("appliance")+fmt.Sprintf(`listeners:
  - {name: web, listen: %q, protocol: https, server_cert: %s, server_key: %s, routes: %s}
`, applianceAddr, appCert.CertFile, appCert.KeyFile, route), nil)

	gatewayAddr, tunnelAddr, connAddr := testkit.FreeLoopbackAddr(b), testkit.FreeLoopbackAddr(b), testkit.FreeLoopbackAddr(b)
	gh, _, _ := net.SplitHostPort(gatewayAddr)
	th, _, _ := net.SplitHostPort(tunnelAddr)
	gwCert := serverCA.Server(b, "gate.example", gh)
	tunCert := gwCA.Server(b, th)
	gw := startInProcess(b, dir, "gateway", common("gateway")+fmt.Sprintf(`listeners:
  - {name: web, listen: %q, protocol: https, server_cert: %s, server_key: %s}
gateway:
  listen: %q
  server_cert: %s
  server_key: %s
  connectors: [{tenant: acme, client_ca: %s}]
`, gatewayAddr, gwCert.CertFile, gwCert.KeyFile, tunnelAddr, tunCert.CertFile, tunCert.KeyFile, connCA.CertFile), nil)
	connCfg := common("connector") + fmt.Sprintf(`listeners:
  - {name: web, listen: %q, protocol: https, server_cert: %s, server_key: %s, routes: %s}
connector:
  tenant: acme
  gateways: [%q]
  gateway_ca: %s
  cert: %s
  key: %s
  allow: ["%s/32:%s"]
`, connAddr, gwCert.CertFile, gwCert.KeyFile, route, tunnelAddr, gwCA.CertFile, connLeaf.CertFile, connLeaf.KeyFile,
		backendHost, backendAddr[len(backendHost)+1:])
	if connector == nil {
		startInProcess(b, dir, "connector", connCfg, nil)
	} else {
		path := filepath.Join(dir, "connector.yaml")
		if err := os.MkdirAll(filepath.Join(dir, "connector"), 0o700); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(connCfg), 0o600); err != nil {
			b.Fatal(err)
		}
		connector(path)
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(fmt.Sprint(gw.Status().Tunnels), "{acme 4}") {
			if time.Now().After(deadline) {
				b.Fatalf("gateway tunnels: %v, want acme 4", gw.Status().Tunnels)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return &benchPaths{appliance: applianceAddr, gateway: gatewayAddr, bulk: len(bulk),
		tls: &tls.Config{RootCAs: serverCA.Pool(), Certificates: []tls.Certificate{client.TLS}}}
}
