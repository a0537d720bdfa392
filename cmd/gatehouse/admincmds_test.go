package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
)

// TestAdminCommands runs the CLI against a running daemon over both
// transports: the daemon's own user (root, or whoever runs the test: a
// global admin either way) on the socket reloads and kills a tenant's sessions; over
// HTTPS a global admin certificate reads the status, and a tenant viewer's
// certificate is refused reload and another tenant's sessions, each refusal
// printed with the role and scope it lacks, exit status 1.
func TestAdminCommands(t *testing.T) {
	dir := t.TempDir()
	serverCA, adminCA := certstest.NewCA(t, "admin server"), certstest.NewCA(t, "admin ca")
	httpsAddr, metrics := testkit.FreeLoopbackAddr(t), testkit.FreeLoopbackAddr(t)
	host, _, _ := net.SplitHostPort(httpsAddr)
	srv := serverCA.Server(t, host)
	ops, viewer := adminCA.Client(t, "ops-admin"), adminCA.Client(t, "acme-viewer")
	for _, f := range []string{"ca.pem", "server.pem", "server.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "admin.sock")
	cfg := fmt.Sprintf(`
enforcement: {xdp: "off", nftables: false}
state_dir: %[1]s
metrics: {listen: "%[2]s"}
shutdown_grace: 1s
admin_socket: %[3]s
static_ranges: [203.0.113.0/24]
tenants: [{id: acme, client_ca: %[1]s/ca.pem}, {id: globex, client_ca: %[1]s/ca.pem}]
listeners:
  - {name: web, listen: "127.0.0.1:1443", protocol: https, server_cert: %[1]s/server.pem, server_key: %[1]s/server.key,
     routes: [{tenant: acme, backend: "http://127.0.0.1:1"}, {tenant: globex, host: g.example, backend: "http://127.0.0.1:2"}]}
access:
  https: {listen: "%[4]s", server_cert: %[5]s, server_key: %[6]s}
  grants:
    - {role: admin, scope: global, certificates: [{client_ca: %[7]s, crl: none, identities: {cn: [ops-admin]}}]}
    - {role: viewer, scope: "tenant:acme", certificates: [{client_ca: %[7]s, crl: none, identities: {cn: [acme-viewer]}}]}
`, dir, metrics, sock, httpsAddr, srv.CertFile, srv.KeyFile, adminCA.CertFile)
	path := filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := daemon.New(daemon.Options{ConfigPath: path, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Build: func(*daemon.Env) ([]daemon.Component, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", httpsAddr)
		if err == nil {
			c.Close()
			if _, err := os.Stat(sock); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the daemon's admin endpoints did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	https := func(l *certstest.Leaf) []string {
		return []string{"--admin-url", "https://" + httpsAddr, "--cert", l.CertFile, "--key", l.KeyFile, "--ca", serverCA.CertFile}
	}
	for _, tc := range []struct {
		args []string
		code int // 0: success
		want string
	}{
		{[]string{"reload", "--socket", sock}, 0, "configuration reloaded: generation 2 in force"},
		{[]string{"sessions", "kill", "tenant:acme", "--socket", sock}, 0, "tenant:acme: 0 sessions closed"},
		{[]string{"sessions", "drain", "tenant:globex/default", "--grace", "5s", "--socket", sock}, 0, "tenant:globex/default: 0 sessions draining"},
		{append([]string{"status"}, https(ops)...), 0, "globex"},
		{append([]string{"status"}, https(viewer)...), 0, "acme"},
		{append([]string{"reload"}, https(viewer)...), 1,
			`gatehouse reload: refused: reload on global needs role admin at global scope; certificate "CN=acme-viewer"`},
		{append([]string{"sessions", "kill", "tenant:globex"}, https(viewer)...), 1, "refused: sessions_kill on tenant:globex needs role admin at a scope covering tenant:globex"},
		{append([]string{"feed", "refresh"}, https(viewer)...), 1, "refused: feed_refresh on global needs role publisher at global scope"},
		{append([]string{"feed", "accept", "lab"}, https(viewer)...), 1, "refused: feed_accept on global needs role publisher"},
		{append([]string{"feed", "accept", "lab"}, https(ops)...), 1, `unknown feed: "lab"`},
		{[]string{"reload", "--admin-url", "http://" + httpsAddr}, 2, "--admin-url must be https://"},
		{[]string{"reload", "--socket", filepath.Join(dir, "nope.sock")}, 3, "no answer from the daemon"},
	} {
		out, _, err := runCLI(append([]string{"-c", path}, tc.args...)...)
		var ee exitError
		switch {
		case tc.code == 0 && (err != nil || !strings.Contains(out, tc.want)):
			t.Errorf("%v: %v\n%s\nwant %q", tc.args, err, out, tc.want)
		case tc.code != 0 && (!errors.As(err, &ee) || ee.code != tc.code || !strings.Contains(ee.msg, tc.want)):
			t.Errorf("%v: %v, want exit %d with %q", tc.args, err, tc.code, tc.want)
		}
		if tc.code == 0 && strings.Contains(strings.Join(tc.args, " "), "acme-viewer") && strings.Contains(out, "globex") {
			t.Errorf("%v: a tenant viewer's status shows globex:\n%s", tc.args, out)
		}
	}
}
