package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestAdminPOSTRefusesCrossSite: an admin certificate installed in a
// browser must not let another site act with it. A POST that a browser
// sends for another site (Sec-Fetch-Site, Origin, a form body), or with a
// token not issued for this certificate, is refused with the reason and
// audited, and nothing is done; the CLI's plain POST and the page's POST
// with its token go through.
func TestAdminPOSTRefusesCrossSite(t *testing.T) {
	l := startAdminLab(t)
	ops, viewer := l.client(l.certs["ops-admin"]), l.client(l.certs["acme-viewer"])
	token := func(c *http.Client) string {
		resp, err := c.Get(l.url + "/ui/session")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s PageSession
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || s.Token == "" {
			t.Fatalf("/ui/session: %+v %v", s, err)
		}
		return s.Token
	}
	opsTok, viewerTok := token(ops), token(viewer)
	for _, tc := range []struct {
		name   string
		hdr    map[string]string
		status int
		want   string
	}{
		{"cross-site fetch", map[string]string{"Sec-Fetch-Site": "cross-site", "X-Gatehouse-CSRF": opsTok}, 403, `Sec-Fetch-Site is "cross-site"`},
		{"same-site other origin", map[string]string{"Sec-Fetch-Site": "same-site"}, 403, "cross-site request refused"},
		{"other origin", map[string]string{"Origin": "https://evil.example", "X-Gatehouse-CSRF": opsTok}, 403, `Origin "https://evil.example" is not this endpoint`},
		{"form post without origin", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 403, "no valid X-Gatehouse-CSRF token"},
		{"same origin without token", map[string]string{"Sec-Fetch-Site": "same-origin"}, 403, "no valid X-Gatehouse-CSRF token"},
		{"another certificate's token", map[string]string{"Sec-Fetch-Site": "same-origin", "X-Gatehouse-CSRF": viewerTok}, 403, "no valid X-Gatehouse-CSRF token"},
		{"forged token", map[string]string{"X-Gatehouse-CSRF": strings.Repeat("A", 54)}, 403, "no valid X-Gatehouse-CSRF token"},
		{"page with its token", map[string]string{"Sec-Fetch-Site": "same-origin", "X-Gatehouse-CSRF": opsTok}, 200, `"sessions": 1`},
		{"cli", nil, 200, `"sessions": 1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(l.cut.killed)
			req, _ := http.NewRequest("POST", l.url+"/sessions/kill?scope=tenant:acme", nil)
			for k, v := range tc.hdr {
				req.Header.Set(k, v)
			}
			resp, err := ops.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.want) {
				t.Fatalf("%d %s, want %d %q", resp.StatusCode, b, tc.status, tc.want)
			}
			l.cut.mu.Lock()
			killed := len(l.cut.killed) - before
			l.cut.mu.Unlock()
			if (tc.status == 200) != (killed == 1) {
				t.Errorf("sessions killed: %d", killed)
			}
			a := l.audit(t)
			last := a[len(a)-1]
			if want := map[bool]string{true: "ok", false: "refused"}[tc.status == 200]; last["action"] != "sessions_kill" || last["result"] != want {
				t.Errorf("last audit line %v, want sessions_kill %s", last, want)
			}
		})
	}
}

// TestPageGuardToken: a token is bound to the certificate and expires.
func TestPageGuardToken(t *testing.T) {
	g := newPageGuard()
	now := time.Now()
	g.now = func() time.Time { return now }
	fp := strings.Repeat("ab", sha256.Size)
	tok := g.token(fp)
	if !g.valid(tok, fp) {
		t.Fatal("a fresh token is not valid")
	}
	if g.valid(tok, strings.Repeat("cd", sha256.Size)) || g.valid(tok, "") {
		t.Error("a token is valid for another certificate")
	}
	if newPageGuard().valid(tok, fp) {
		t.Error("a token is valid under another key (a restarted daemon)")
	}
	now = now.Add(csrfLifetime + time.Second)
	if g.valid(tok, fp) {
		t.Error("an expired token is valid")
	}
}

// TestStatusPageHeaders: the page and every API answer of the HTTPS
// endpoint carry the CSP and the other headers; a principal with no
// grant gets not even the page; the socket serves no page.
func TestStatusPageHeaders(t *testing.T) {
	l := startAdminLab(t)
	for _, path := range []string{"/", "/ui/app.js", "/ui/style.css", "/ui/session", "/status"} {
		resp, err := l.client(l.certs["acme-viewer"]).Get(l.url + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h := resp.Header
		if resp.StatusCode != 200 || h.Get("Content-Security-Policy") != pageCSP || h.Get("X-Content-Type-Options") != "nosniff" ||
			h.Get("Referrer-Policy") != "no-referrer" || h.Get("Cache-Control") != "no-store" {
			t.Errorf("GET %s: %d %v", path, resp.StatusCode, h)
		}
	}
	if code, body, err := l.do(t, l.client(l.certs["stranger"]), "GET", "/"); err != nil || code != 403 {
		t.Errorf("a certificate with no grant gets the page: %d %s %v", code, body, err)
	}
	if code, _, _ := l.do(t, l.client(l.certs["acme-viewer"]), "GET", "/ui/index.html"); code != 404 {
		t.Errorf("GET /ui/index.html: %d, want 404", code)
	}
	sock := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", l.sock)
	}}}
	resp, err := sock.Get("http://gatehouse/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("the socket serves / with %d, want 404", resp.StatusCode)
	}
}
