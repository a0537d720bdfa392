package daemon

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/admin"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// The status page: HTML, script and style, all in the binary. The page
// reads GET /status (the same scoped answer the CLI gets) and GET
// /ui/session (who the viewer is, what it may do, its CSRF token), and its
// buttons POST to the admin API's own action endpoints.
//
//go:embed ui/index.html ui/app.js ui/style.css
var uiFiles embed.FS

// pageCSP is the status page's Content-Security-Policy, sent with every
// answer of the HTTPS endpoint: nothing inline, nothing from elsewhere.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

// csrfHeader carries the page's CSRF token on its POSTs; csrfLifetime is
// how long a token is good for (the page fetches a fresh one at each
// refresh).
const (
	csrfHeader   = "X-Gatehouse-CSRF"
	csrfLifetime = 12 * time.Hour
)

// errCrossSite is a browser request the endpoint does not serve: from
// another site, or without a valid CSRF token.
var errCrossSite = errors.New("cross-site request refused")

// pageGuard issues and checks the CSRF tokens of one HTTPS endpoint: an
// HMAC, under a key drawn when the endpoint starts, of the client
// certificate's fingerprint and the token's expiry. A token is good only
// on a connection with the same certificate, and none survives a restart.
type pageGuard struct {
	key [32]byte
	now func() time.Time
}

func newPageGuard() *pageGuard {
	g := &pageGuard{now: time.Now}
	rand.Read(g.key[:]) // never fails (crypto/rand panics instead)
	return g
}

func (g *pageGuard) mac(fingerprint string, exp uint64) []byte {
	m := hmac.New(sha256.New, g.key[:])
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], exp)
	m.Write([]byte("gatehouse status page csrf\x00"))
	m.Write(b[:])
	m.Write([]byte(fingerprint))
	return m.Sum(b[:])
}

// token is a fresh token for the certificate with fingerprint.
func (g *pageGuard) token(fingerprint string) string {
	exp := uint64(g.now().Add(csrfLifetime).Unix())
	return base64.RawURLEncoding.EncodeToString(g.mac(fingerprint, exp))
}

// valid reports whether tok was issued by g for fingerprint and has not
// expired.
func (g *pageGuard) valid(tok, fingerprint string) bool {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(raw) != 8+sha256.Size || fingerprint == "" {
		return false
	}
	exp := binary.BigEndian.Uint64(raw[:8])
	if exp < uint64(g.now().Unix()) {
		return false
	}
	return hmac.Equal(raw, g.mac(fingerprint, exp))
}

// httpsHandler is what the HTTPS admin endpoint serves: the admin API,
// the status page (only here: the unix socket has no browser), security
// headers on every answer, and the CSRF check in front of every POST.
func (d *Daemon) httpsHandler(api http.Handler) http.Handler {
	g := newPageGuard()
	mux := http.NewServeMux()
	ui, _ := fs.Sub(uiFiles, "ui")
	static := http.StripPrefix("/ui/", http.FileServerFS(ui))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		if !d.mayView(w, r) {
			return
		}
		b, _ := uiFiles.ReadFile("ui/index.html")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(b)
	})
	mux.HandleFunc("GET /ui/{file}", func(w http.ResponseWriter, r *http.Request) {
		switch r.PathValue("file") {
		case "app.js", "style.css":
			if d.mayView(w, r) {
				static.ServeHTTP(w, r)
			}
		default:
			http.NotFound(w, r)
		}
	})
	mux.HandleFunc("GET /ui/session", func(w http.ResponseWriter, r *http.Request) {
		if !d.mayView(w, r) {
			return
		}
		p := d.principal(r)
		writeJSON(w, pageSession(p, scopedStatus(d.Status(), p), g.token(p.Fingerprint)))
	})
	mux.Handle("/", api)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", pageCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := g.check(r); err != nil {
				d.refuse(w, d.principal(r), postAction(r.URL.Path), bounded(r.URL.Query().Get("scope"), 100),
					map[string]any{"path": bounded(r.URL.Path, 64)}, err)
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// check refuses a request that changes something when it comes from a
// browser on another site, or from a browser (or anything sending a
// token) without a valid token for its client certificate. The CLI sends
// no Origin, no Sec-Fetch-* and no form body, and passes without a token;
// a browser cannot send such a POST to another site (it adds Origin and
// Sec-Fetch-Site, and a form posts a form content type).
func (g *pageGuard) check(r *http.Request) error {
	h := r.Header
	if s := h.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" {
		return fmt.Errorf("%w: Sec-Fetch-Site is %q", errCrossSite, bounded(s, 32))
	}
	if o := h.Get("Origin"); o != "" && o != "https://"+r.Host {
		return fmt.Errorf("%w: Origin %q is not this endpoint", errCrossSite, bounded(o, 100))
	}
	browser := h.Get("Origin") != "" || h.Get("Sec-Fetch-Site") != "" || h.Get("Sec-Fetch-Mode") != "" ||
		h.Get("Referer") != "" || h.Get("Cookie") != "" || formBody(h.Get("Content-Type"))
	tok := h.Get(csrfHeader)
	if !browser && tok == "" {
		return nil
	}
	fp := ""
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		fp = certs.FingerprintSHA256(r.TLS.PeerCertificates[0])
	}
	if !g.valid(tok, fp) {
		return fmt.Errorf("%w: no valid %s token for this client certificate", errCrossSite, csrfHeader)
	}
	return nil
}

// formBody reports whether ct is a content type an HTML form (or a
// script without CORS) may post to another site.
func formBody(ct string) bool {
	ct, _, _ = strings.Cut(strings.ToLower(ct), ";")
	switch strings.TrimSpace(ct) {
	case "application/x-www-form-urlencoded", "multipart/form-data", "text/plain":
		return true
	}
	return false
}

// postAction is the audited action of a POST refused before routing; an
// unknown path is counted as "unknown" (metric labels stay bounded).
func postAction(path string) admin.Action {
	switch path {
	case "/feeds/accept":
		return admin.ActFeedAccept
	case "/feeds/refresh":
		return admin.ActFeedRefresh
	case "/sessions/drain":
		return admin.ActDrain
	case "/sessions/kill":
		return admin.ActKill
	case "/reload":
		return admin.ActReload
	case "/teardown":
		return admin.ActTeardown
	}
	return "unknown"
}

func bounded(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// mayView answers 403 to a principal with no grant at all: it sees not
// even the empty page.
func (d *Daemon) mayView(w http.ResponseWriter, r *http.Request) bool {
	p := d.principal(r)
	if _, err := p.Authorize(admin.ActStatus, policy.Global); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return false
	}
	return true
}

// PageSession is what GET /ui/session tells the status page: who is
// looking, with which grants, what buttons to show, and the CSRF token
// for its POSTs.
type PageSession struct {
	Principal string       `json:"principal"`
	Grants    []string     `json:"grants"`
	Token     string       `json:"csrf_token"`
	Actions   []PageAction `json:"actions"`
}

// PageAction is one action the principal may take: the server decides,
// the page only shows it.
type PageAction struct {
	Action admin.Action `json:"action"`
	Scope  string       `json:"scope,omitempty"` // sessions: tenant:ID or tenant:ID/ENV
	Feed   string       `json:"feed,omitempty"`  // feed_accept: a feed with a release in quarantine
}

// pageSession lists the actions p may take on what st (already scoped to
// p) shows: accepting a quarantined feed, draining and killing the
// sessions of each tenant and environment.
func pageSession(p admin.Principal, st Status, token string) PageSession {
	s := PageSession{Principal: p.Name(), Token: token, Grants: []string{}, Actions: []PageAction{}}
	for _, g := range p.Grants {
		s.Grants = append(s.Grants, g.String())
	}
	if _, err := p.Authorize(admin.ActFeedAccept, policy.Global); err == nil {
		for _, f := range st.Feeds {
			if f.Quarantined != 0 {
				s.Actions = append(s.Actions, PageAction{Action: admin.ActFeedAccept, Feed: f.Name})
			}
		}
	}
	for _, t := range st.Tenants {
		scopes := []policy.Scope{{Tenant: t.ID}}
		for _, e := range t.Environments {
			scopes = append(scopes, policy.Scope{Tenant: t.ID, Environment: e.Name})
		}
		for _, sc := range scopes {
			for _, a := range []admin.Action{admin.ActDrain, admin.ActKill} {
				if _, err := p.Authorize(a, sc); err == nil {
					s.Actions = append(s.Actions, PageAction{Action: a, Scope: sc.String()})
				}
			}
		}
	}
	return s
}
