package test

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
)

// fleetNode is one gatehouse daemon of a fleet test, without kernel
// layers: what is shared here is TLS state, not packets.
type fleetNode struct {
	d      *daemonProc
	listen string
	crl    string
}

// startFleetNode runs a daemon with its own state directory and CRL file,
// sharing the tenant CA, the server certificate, the backend and the
// ticket key file keys with the other nodes.
func startFleetNode(t *testing.T, ca *certstest.CA, server *certstest.Leaf, backend, keys string) *fleetNode {
	t.Helper()
	dir := t.TempDir()
	n := &fleetNode{crl: ca.CRL(t, filepath.Join(dir, "acme.crl"), time.Now().Add(24*time.Hour))}
	metrics := testkit.FreeLoopbackAddr(t)
	n.listen = testkit.FreeLoopbackAddr(t)
	cfg := fmt.Sprintf(`
enforcement: {xdp: "off", nftables: false}
state_dir: %[1]s
shutdown_grace: 2s
admin_socket: %[1]s/admin.sock
metrics: {listen: "%[2]s"}
tls: {ticket_keys: %[3]s}
tenants: [{id: acme, client_ca: %[4]s, crl: %[5]s, identities: {uri_san: ["spiffe://acme/*"]}}]
listeners:
  - {name: web, listen: "%[6]s", protocol: https, server_cert: %[7]s, server_key: %[8]s,
     routes: [{tenant: acme, backend: "%[9]s"}]}
`, dir, metrics, keys, ca.CertFile, n.crl, n.listen, server.CertFile, server.KeyFile, backend)
	path := filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	n.d = launch(t, exec.Command(binary(t), "run", "-c", path), metrics, http.DefaultClient)
	return n
}

// fleetClient is a tenant's HTTPS client that keeps its TLS sessions
// across connections (each request on a new one), as a cloud client with a
// session cache does.
func fleetClient(t *testing.T, ca *certstest.CA, leaf *certstest.Leaf, cache tls.ClientSessionCache) *http.Client {
	tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{
		RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{leaf.TLS},
		ClientSessionCache: cache,
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// get makes one request to addr; resumed says whether its TLS session was
// a resumption.
func fleetGet(c *http.Client, addr string) (body string, resumed bool, err error) {
	resp, err := c.Get("https://" + addr + "/")
	if err != nil {
		return "", false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.TLS != nil && resp.TLS.DidResume, err
}

func writeKeyFile(t *testing.T, path string, n int) {
	t.Helper()
	var lines string
	for range n {
		k := make([]byte, 48)
		rand.Read(k)
		lines += base64.StdEncoding.EncodeToString(k) + "\n"
	}
	if err := os.WriteFile(path, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestFleetSessionResumption: two daemons that read the same
// tls.ticket_keys file resume each other's sessions, through the whole
// proxy (the request reaches the backend); a third with its own key file
// makes a full handshake. Revoking the client's certificate in node B's
// CRL refuses the resumption of a ticket node A issued, while A, whose CRL
// does not list it, still serves it.
func TestFleetSessionResumption(t *testing.T) {
	ca := certstest.NewCA(t, "acme")
	server := ca.Server(t, "localhost")
	client := ca.Client(t, "acme-cloud", "spiffe://acme/cloud")
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.Header.Get("X-Gatehouse-Tenant"))
	}))
	t.Cleanup(backend.Close)
	dir := t.TempDir()
	shared, own := filepath.Join(dir, "ticket.keys"), filepath.Join(dir, "own.keys")
	writeKeyFile(t, shared, 2)
	writeKeyFile(t, own, 1)
	a := startFleetNode(t, ca, server, backend.URL, shared)
	b := startFleetNode(t, ca, server, backend.URL, shared)
	c := startFleetNode(t, ca, server, backend.URL, own)

	cache := tls.NewLRUClientSessionCache(8)
	cl := fleetClient(t, ca, client, cache)
	if body, resumed, err := fleetGet(cl, a.listen); err != nil || body != "hello acme" || resumed {
		t.Fatalf("first request on A: %q resumed %v %v\n%s", body, resumed, err, a.d.out.String())
	}
	if body, resumed, err := fleetGet(cl, b.listen); err != nil || body != "hello acme" || !resumed {
		t.Fatalf("on B: %q resumed %v %v, want A's session resumed\n%s", body, resumed, err, b.d.out.String())
	}
	if body, resumed, err := fleetGet(fleetClient(t, ca, client, cache), c.listen); err != nil || body != "hello acme" || resumed {
		t.Fatalf("on C with other keys: %q resumed %v %v, want a full handshake", body, resumed, err)
	}

	// A fresh session from A, then B revokes the certificate.
	cache = tls.NewLRUClientSessionCache(8)
	cl = fleetClient(t, ca, client, cache)
	if _, _, err := fleetGet(cl, a.listen); err != nil {
		t.Fatal(err)
	}
	ca.CRL(t, b.crl, time.Now().Add(24*time.Hour), client)
	if err := b.d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// Wait with a client of its own (a full handshake each time) until B
	// refuses the certificate, so that the ticket under test is used once.
	probe := fleetClient(t, ca, client, nil)
	b.d.waitFor(t, "B to refuse the revoked certificate", func() bool {
		_, _, err := fleetGet(probe, b.listen)
		return err != nil
	})
	if body, resumed, err := fleetGet(cl, b.listen); err == nil {
		t.Fatalf("on B after revocation: %q resumed %v, want the resumption refused", body, resumed)
	}
	if b.d.out.Occurrences("revoked") == 0 {
		t.Errorf("B's log does not say revoked:\n%s", b.d.out.String())
	}
	if body, resumed, err := fleetGet(cl, a.listen); err != nil || body != "hello acme" || !resumed {
		t.Fatalf("on A, whose CRL does not list it: %q resumed %v %v", body, resumed, err)
	}
}

// TestFleetFeedsConverge: three daemons on the same signed feed enforce
// the same serial; after a new release, `gatehouse feed refresh` on each
// brings all of them to it at once, without waiting for the (hourly)
// refresh, and each exports the refresh interval the disagreement alert
// reads.
func TestFleetFeedsConverge(t *testing.T) {
	mirror := newFeedMirror(t, t.TempDir())
	mirror.publish(t, 1, "192.0.2.0/24\n198.51.100.0/25\n")
	type node struct {
		d      *daemonProc
		config string
	}
	var nodes []node
	for range 3 {
		d, config := startFeedDaemon(t, mirror)
		nodes = append(nodes, node{d, config})
	}
	serials := func() []string {
		var out []string
		for _, n := range nodes {
			_, m := n.d.get(t, "/metrics")
			out = append(out, regexp.MustCompile(`(?m)^gatehouse_feed_serial\{feed="lab"\} (\S+)$`).FindString(m))
		}
		return out
	}
	for i, s := range serials() {
		if !strings.HasSuffix(s, " 1") {
			t.Fatalf("node %d at start: %q, want serial 1", i, s)
		}
	}
	mirror.publish(t, 2, "192.0.2.0/24\n198.51.100.0/25\n198.51.100.128/28\n")
	for i, n := range nodes {
		if out, code := refresh(t, n.config, "lab"); code != 0 || !strings.Contains(out, "applied serial 2") {
			t.Fatalf("refresh on node %d: exit %d\n%s", i, code, out)
		}
	}
	for i, s := range serials() {
		if !strings.HasSuffix(s, " 2") {
			t.Errorf("node %d after the refresh: %q, want serial 2", i, s)
		}
	}
	for i, n := range nodes {
		if _, m := n.d.get(t, "/metrics"); !strings.Contains(m, `gatehouse_feed_refresh_seconds{feed="lab"} 3600`) {
			t.Errorf("node %d does not export the feed's refresh interval", i)
		}
	}
}
