package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
)

// TestStatusMatchesCheck starts the daemon on a configuration like the
// demo's (https, soap and tn3270 listeners, a route with two backends, a
// START_TLS listener, two tenants, a feed that verifies and one whose
// mirror is down) and compares what `gatehouse status --json` says is in
// force with what `gatehouse check --json` says the configuration puts in
// force: the same listeners and routes, tenants and feeds.
func TestStatusMatchesCheck(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t, "acme")
	server := ca.Server(t, "localhost")
	mirror := newFeedMirror(t, filepath.Join(dir, "mirror"))
	mirror.publish(t, 1, "192.0.2.0/24\n2001:db8:1::/48\n")
	metrics := testkit.FreeLoopbackAddr(t)
	cfg := fmt.Sprintf(`
enforcement: {xdp: "off", nftables: false}
state_dir: %[1]s/state
admin_socket: %[1]s/admin.sock
metrics: {listen: "%[2]s"}
feeds:
  - {name: lab, source: "file://%[3]s/manifest.json", format: cidr, minisign_keys: ["%[4]s"], threshold: 1, refresh: 1h}
  - {name: down, source: "file://%[1]s/nowhere/manifest.json", format: cidr, minisign_keys: ["%[4]s"], threshold: 1, refresh: 1h}
static_ranges: [203.0.113.0/24]
rules: {reserved_exempt: [192.0.2.0/24, "2001:db8::/32"]}
tenants:
  - {id: acme, client_ca: %[5]s, identities: {uri_san: ["spiffe://acme/*"]}}
  - {id: globex, client_ca: %[5]s, identities: {uri_san: ["spiffe://globex/*"]}}
listeners:
  - name: web
    listen: "%[6]s"
    protocol: https
    server_cert: %[7]s
    server_key: %[8]s
    routes:
      - {tenant: acme, host: acme.example, path: /, backends: ["https://127.0.0.1:1", "https://127.0.0.1:2"], backend_ca: %[5]s}
      - {tenant: globex, path: /api/, backend: "http://127.0.0.1:3"}
  - name: services
    listen: "%[9]s"
    protocol: soap
    server_cert: %[7]s
    server_key: %[8]s
    routes:
      - {tenant: acme, backend: "http://127.0.0.1:4", soap_actions: ["urn:acme:GetOrder"]}
  - name: mainframe
    listen: "%[10]s"
    protocol: tn3270
    starttls: true
    server_cert: %[7]s
    server_key: %[8]s
    routes:
      - {tenant: acme, backend: "127.0.0.1:5", lu_names: ["ACMELU0*"]}
`, dir, metrics, mirror.dir, mirror.pub.String(), ca.CertFile, testkit.FreeLoopbackAddr(t), server.CertFile, server.KeyFile, testkit.FreeLoopbackAddr(t), testkit.FreeLoopbackAddr(t))
	path := filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	raw, err := exec.Command(binary(t), "check", "--json", "-c", path).Output()
	if err != nil {
		t.Fatalf("check --json: %v\n%s", err, raw)
	}
	var check struct {
		Listeners []map[string]any `json:"listeners"`
		Tenants   []string         `json:"tenants"`
		Feeds     []struct {
			Name string `json:"name"`
		} `json:"feeds"`
	}
	if err := json.Unmarshal(raw, &check); err != nil {
		t.Fatalf("check --json: %v\n%s", err, raw)
	}

	d := &daemonProc{cmd: exec.Command(binary(t), "run", "-c", path), out: &testkit.LogBuffer{}, metrics: metrics, exited: make(chan struct{}), http: http.DefaultClient}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exitErr = d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(d.kill)
	// Not ready (feed "down" has no release), but in force with feed lab.
	d.waitFor(t, "feed lab in force", func() bool {
		_, m := d.get(t, "/metrics")
		return regexpMatch(`gatehouse_feed_serial\{feed="lab"\} 1\n`, m)
	})
	raw, err = exec.Command(binary(t), "status", "--json", "-c", path).Output()
	if err != nil {
		t.Fatalf("status --json: %v\n%s", err, raw)
	}
	var status struct {
		Listeners []map[string]any `json:"listeners"`
		Tenants   []struct {
			ID string `json:"id"`
		} `json:"tenants"`
		Feeds []struct {
			Name string `json:"name"`
		} `json:"feeds"`
	}
	if err := json.Unmarshal(raw, &status); err != nil {
		t.Fatalf("status --json: %v\n%s", err, raw)
	}

	for _, l := range status.Listeners {
		delete(l, "backend_health") // live state, which check cannot know
	}
	if len(check.Listeners) != 4 || !reflect.DeepEqual(status.Listeners, check.Listeners) {
		t.Errorf("listeners and routes differ:\nstatus: %v\ncheck:  %v", status.Listeners, check.Listeners)
	}
	var tenants, feedsStatus, feedsCheck []string
	for _, x := range status.Tenants {
		tenants = append(tenants, x.ID)
	}
	for _, f := range status.Feeds {
		feedsStatus = append(feedsStatus, f.Name)
	}
	for _, f := range check.Feeds {
		feedsCheck = append(feedsCheck, f.Name)
	}
	if !reflect.DeepEqual(tenants, check.Tenants) || len(tenants) != 2 {
		t.Errorf("tenants differ: status %v, check %v", tenants, check.Tenants)
	}
	if !reflect.DeepEqual(feedsStatus, feedsCheck) || len(feedsCheck) != 2 {
		t.Errorf("feeds differ: status %v, check %v", feedsStatus, feedsCheck)
	}
}
