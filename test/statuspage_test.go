package test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// TestStatusPageInChromium runs a real `gatehouse run` on loopback with an
// HTTPS tenant listener, a live session of tenant acme and the HTTPS admin
// endpoint, and opens the status page in headless Chromium: a tenant
// viewer sees acme and nothing of globex, gets no button, and its forged
// POSTs are refused and audited; the global admin kills acme's sessions
// with a click and a confirmation, the session ends and the audit log
// says so. The page's CSP is in force (an inline script is refused and
// reported) and a tenant listener does not serve the page.
//
// Headless Chromium on Linux picks a client certificate only through an
// AutoSelectCertificateForUrls policy, which it reads from
// /etc/chromium/policies only (a test must not write there): a certificate
// in the profile's NSS database gets no answer without it. So each
// principal reaches the endpoint through a forwarder in the test: it
// terminates the browser's TLS and opens its own mutual-TLS connection
// to the admin endpoint with the principal's certificate, copying bytes
// both ways (Host, Origin and every header arrive untouched).
func TestStatusPageInChromium(t *testing.T) {
	chromium := netns.RequireTool(t, "chromium", "chromium")
	dir := t.TempDir()
	tenantCA, adminCA, serverCA := certstest.NewCA(t, "tenants"), certstest.NewCA(t, "admins"), certstest.NewCA(t, "servers")
	server := serverCA.Server(t, "localhost", "127.0.0.1")
	acme, globex := tenantCA.Client(t, "acme-cloud", "spiffe://acme/cloud"), tenantCA.Client(t, "globex-cloud", "spiffe://globex/cloud")
	ops, viewer := adminCA.Client(t, "ops-admin"), adminCA.Client(t, "acme-viewer")
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "backend of %s: %s", r.Header.Get("X-Gatehouse-Tenant"), r.URL.Path)
	}))
	t.Cleanup(backend.Close)
	metrics, listen, adminAddr := testkit.FreeLoopbackAddr(t), testkit.FreeLoopbackAddr(t), testkit.FreeLoopbackAddr(t)
	audit := filepath.Join(dir, "audit.log")
	cfg := fmt.Sprintf(`
enforcement: {xdp: "off", nftables: false}
state_dir: %[1]s
shutdown_grace: 1s
admin_socket: %[1]s/admin.sock
metrics: {listen: "%[2]s"}
tenants:
  - {id: acme, client_ca: %[3]s, identities: {uri_san: ["spiffe://acme/*"]}}
  - {id: globex, client_ca: %[3]s, identities: {uri_san: ["spiffe://globex/*"]}}
listeners:
  - {name: web, listen: "%[4]s", protocol: https, server_cert: %[5]s, server_key: %[6]s,
     routes: [{tenant: acme, backend: "%[7]s"}, {tenant: globex, backend: "%[7]s"}]}
access:
  audit_log: %[10]s
  https: {listen: "%[8]s", server_cert: %[5]s, server_key: %[6]s}
  grants:
    - {role: admin, scope: global, certificates: [{client_ca: %[9]s, crl: none, identities: {cn: [ops-admin]}}]}
    - {role: viewer, scope: "tenant:acme", certificates: [{client_ca: %[9]s, crl: none, identities: {cn: [acme-viewer]}}]}
`, dir, metrics, tenantCA.CertFile, listen, server.CertFile, server.KeyFile, backend.URL, adminAddr, adminCA.CertFile, audit)
	path := filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d := launch(t, exec.Command(binary(t), "run", "-c", path), metrics, http.DefaultClient)

	// A live session of acme: a request answered, the connection kept open.
	sess, err := tls.Dial("tcp", listen, &tls.Config{RootCAs: serverCA.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{acme.TLS}})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	fmt.Fprint(sess, "GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
	br := bufio.NewReader(sess)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	d.waitFor(t, "acme's live session", func() bool {
		_, m := d.get(t, "/metrics")
		return strings.Contains(m, `gatehouse_proxy_connections_active{environment="default",listener="web",tenant="acme"} 1`)
	})

	// The tenant listener does not serve the page: its paths go to the
	// tenant's backend like any other.
	for _, p := range []string{"/", "/ui/app.js", "/ui/session", "/status"} {
		body, err := tlsGetPath(listen, p, serverCA, globex)
		if err != nil || body != "backend of globex: "+p {
			t.Errorf("GET %s on the tenant listener: %q %v, want the backend's answer", p, body, err)
		}
	}

	viewerURL := forwarder(t, adminAddr, serverCA, viewer, server)
	adminURL := forwarder(t, adminAddr, serverCA, ops, server)
	ctx := browser(t, chromium)

	// The tenant viewer: acme only, no button; its forged POSTs refused.
	do(t, ctx, chromedp.Navigate(viewerURL+"/"), chromedp.WaitVisible(chromedp.CSS(`body[data-loaded="1"]`)))
	html := run(t, ctx, chromedp.OuterHTML(chromedp.CSS("html")))
	forged := run(t, ctx, chromedp.Evaluate[string](`(async () => {
		const s = await (await fetch("/ui/session")).json();
		const out = [];
		for (const [url, hdr] of [["/sessions/kill?scope=tenant:acme", {"X-Gatehouse-CSRF": s.csrf_token}],
		                          ["/sessions/kill?scope=tenant:globex", {"X-Gatehouse-CSRF": s.csrf_token}],
		                          ["/sessions/drain?scope=tenant:acme", {}]]) {
			const r = await fetch(url, {method: "POST", headers: hdr});
			out.push(r.status + " " + (await r.text()).trim());
		}
		return out.join("\n");
	})()`, chromedp.EvalAwaitPromise))
	cspReported := run(t, ctx, chromedp.Evaluate[bool](`new Promise(done => {
		document.addEventListener("securitypolicyviolation", () => done(window.injected === undefined));
		const s = document.createElement("script");
		s.textContent = "window.injected = 1";
		document.body.appendChild(s);
		setTimeout(() => done(false), 5000);
	})`, chromedp.EvalAwaitPromise))
	if !strings.Contains(html, ">acme<") || !strings.Contains(html, "acme-viewer") {
		t.Errorf("the viewer's page does not show acme:\n%s", html)
	}
	if strings.Contains(html, "globex") {
		t.Errorf("the acme viewer's page names globex:\n%s", html)
	}
	if strings.Contains(html, "data-action") {
		t.Errorf("the viewer's page shows buttons:\n%s", html)
	}
	lines := strings.Split(forged, "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "403 refused: sessions_kill on tenant:acme needs role admin") ||
		!strings.HasPrefix(lines[1], "403 refused: sessions_kill on tenant:globex") ||
		!strings.HasPrefix(lines[2], "403 cross-site request refused") {
		t.Errorf("forged POSTs of the viewer:\n%s", forged)
	}
	if !cspReported {
		t.Error("an inline script ran or was not reported: the Content-Security-Policy is not in force")
	}

	// The global admin: sees both tenants, kills acme's sessions.
	do(t, ctx, chromedp.Navigate(adminURL+"/"), chromedp.WaitVisible(chromedp.CSS(`body[data-loaded="1"]`)))
	html = run(t, ctx, chromedp.OuterHTML(chromedp.CSS("html")))
	do(t, ctx,
		chromedp.Click(chromedp.CSS(`button[data-action="sessions_kill"][data-scope="tenant:acme"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm`)),
		chromedp.Click(chromedp.CSS(`#confirm-yes`)),
		chromedp.WaitVisible(chromedp.CSS(`#result.good`)))
	result := run(t, ctx, chromedp.Text(chromedp.CSS(`#result`)))
	for _, want := range []string{">acme<", ">globex<", "ops-admin", "live sessions", `data-action="sessions_drain"`, ">web<"} {
		if !strings.Contains(html, want) {
			t.Errorf("the admin's page lacks %q:\n%s", want, html)
		}
	}
	if !strings.Contains(result, `"sessions": 1`) {
		t.Errorf("kill from the page: %q", result)
	}
	sess.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("acme's session is still open after the kill: %v", err)
	}

	got := readAudit(t, audit)
	for _, want := range []string{
		"ops-admin sessions_kill tenant:acme ok",
		"acme-viewer sessions_kill tenant:acme refused",
		"acme-viewer sessions_kill tenant:globex refused",
		"acme-viewer sessions_drain tenant:acme refused",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("audit log lacks %q:\n%s", want, got)
		}
	}
}

// do runs steps in the browser's tab, bounded to a minute.
func do(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(c, steps...); err != nil {
		t.Fatalf("chromium: %v", err)
	}
}

// run runs one action that answers a value, bounded to a minute.
func run[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	v, err := chromedp.Run(c, a)
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return v
}

// readAudit is the audit log, one "subject action target result" per line.
func readAudit(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var e struct{ Subject, Action, Target, Result string }
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		fmt.Fprintf(&b, "%s %s %s %s\n", strings.TrimPrefix(e.Subject, "CN="), e.Action, e.Target, e.Result)
	}
	return b.String()
}

// forwarder listens on loopback with TLS (server's certificate) and
// forwards each connection to the admin endpoint at addr over mutual TLS
// with client's certificate; it returns its https:// URL.
func forwarder(t *testing.T, addr string, serverCA *certstest.CA, client, server *certstest.Leaf) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{server.TLS}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	up := &tls.Config{RootCAs: serverCA.Pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{client.TLS}, NextProtos: []string{"http/1.1"}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := tls.Dial("tcp", addr, up)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { io.Copy(u, c); u.CloseWrite() }()
				io.Copy(c, u)
			}()
		}
	}()
	return "https://" + ln.Addr().String()
}

// browser starts headless Chromium and returns the context of its one tab.
func browser(t *testing.T, chromium string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox,                               // the tests run as root
		chromedp.Flag("ignore-certificate-errors", true), // the forwarder's hop only
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return ctx
}
