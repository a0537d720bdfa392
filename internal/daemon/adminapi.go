package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/admin"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/rules"
)

// SessionCutter is a component holding tenants' sessions (the proxy):
// Kill cuts them now, Drain ends them gracefully (see proxy.Server.Drain).
type SessionCutter interface {
	Kill(tenant, env string) int
	Drain(tenant, env string, grace time.Duration) int
}

// SessionHolder is a component that may hold sessions; Sessions is nil
// when it holds none.
type SessionHolder interface {
	Sessions() SessionCutter
}

// accessRingLines is how many access log lines the daemon keeps for
// GET /access-log.
const accessRingLines = 2000

// defaultDrainGrace is how long a drain lets sessions run on when the
// request names no grace; maxDrainGrace bounds what it may name.
const (
	defaultDrainGrace = 30 * time.Second
	maxDrainGrace     = time.Hour
)

// SessionsResult is the answer of sessions drain and kill.
type SessionsResult struct {
	Scope    policy.Scope `json:"scope"`
	Sessions int          `json:"sessions"`
	Grace    string       `json:"grace,omitempty"`
}

// adminMux is the admin API, the same on the unix socket and the HTTPS
// endpoint. Every request but /ready is authorised for its principal
// and written to the audit log, refused ones too.
func (d *Daemon) adminMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		c, ok := d.begin(w, r, admin.ActStatus, policy.Global, nil)
		if !ok {
			return
		}
		writeJSON(w, scopedStatus(d.Status(), c.p))
		c.done(nil)
	})
	// GET /ready: what /readyz answers, for `gatehouse status --ready`
	// (keepalived's track_script). Authorised, not audited: it is asked
	// every few seconds.
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		p := d.principal(r)
		if _, err := p.Authorize(admin.ActStatus, policy.Global); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		if why := d.NotReady(); len(why) > 0 {
			http.Error(w, "not ready: "+joinWhy(why, p.Global()), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		c, ok := d.begin(w, r, admin.ActMetrics, policy.Global, nil)
		if !ok {
			return
		}
		mfs, _ := d.gatherer().Gather()
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		c.done(writeScopedMetrics(w, mfs, c.p))
	})
	mux.HandleFunc("GET /certificates", func(w http.ResponseWriter, r *http.Request) {
		c, ok := d.begin(w, r, admin.ActCerts, policy.Global, nil)
		if !ok {
			return
		}
		writeJSON(w, scopedCerts(d.Status().Certs, c.p))
		c.done(nil)
	})
	mux.HandleFunc("GET /access-log", func(w http.ResponseWriter, r *http.Request) {
		n := 100
		if s := r.URL.Query().Get("n"); s != "" {
			v, err := strconv.Atoi(s)
			if err != nil || v < 1 || v > accessRingLines {
				http.Error(w, fmt.Sprintf("n: want 1..%d", accessRingLines), http.StatusBadRequest)
				return
			}
			n = v
		}
		c, ok := d.begin(w, r, admin.ActAccessLog, policy.Global, map[string]any{"n": n})
		if !ok {
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		for _, l := range d.ring.Tail(n, c.p.Sees) {
			w.Write(append(l, '\n'))
		}
		c.done(nil)
	})
	// POST /feeds/refresh?feed=NAME…: fetch now, wait, answer the outcome
	// of each (gatehouse feed refresh).
	mux.HandleFunc("POST /feeds/refresh", func(w http.ResponseWriter, r *http.Request) {
		names := r.URL.Query()["feed"]
		c, ok := d.begin(w, r, admin.ActFeedRefresh, policy.Global, map[string]any{"feeds": names})
		if !ok {
			return
		}
		out, err := d.RefreshFeeds(r.Context(), names)
		switch {
		case errors.Is(err, rules.ErrUnknownFeed), errors.Is(err, ErrNoFeeds):
			http.Error(w, err.Error(), http.StatusNotFound)
		case err != nil && r.Context().Err() != nil:
			err = fmt.Errorf("the client went away; the round completes without it: %w", err)
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		default:
			writeJSON(w, out)
		}
		c.done(err)
	})
	mux.HandleFunc("POST /feeds/accept", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("feed")
		c, ok := d.begin(w, r, admin.ActFeedAccept, policy.Global, map[string]any{"feed": name})
		if !ok {
			return
		}
		if !d.feedConfigured(name) {
			err := fmt.Errorf("%w: %q", rules.ErrUnknownFeed, name)
			http.Error(w, err.Error(), http.StatusNotFound)
			c.done(err)
			return
		}
		acc, err := AcceptQuarantined(d.cfg.Load().StateDir, name, time.Now())
		switch {
		case errors.Is(err, ErrNothingToAccept):
			http.Error(w, err.Error(), http.StatusConflict)
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		default:
			c.e.Args["serial"] = acc.Serial
			c.e.Args["manifest_sha256"] = acc.Digest
			writeJSON(w, acc)
		}
		c.done(err)
	})
	mux.HandleFunc("POST /sessions/drain", func(w http.ResponseWriter, r *http.Request) { d.sessions(w, r, admin.ActDrain) })
	mux.HandleFunc("POST /sessions/kill", func(w http.ResponseWriter, r *http.Request) { d.sessions(w, r, admin.ActKill) })
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		c, ok := d.begin(w, r, admin.ActReload, policy.Global, nil)
		if !ok {
			return
		}
		err := d.Reload()
		if err != nil {
			http.Error(w, "reload refused; the configuration in force stays: "+err.Error(), http.StatusConflict)
		} else {
			writeJSON(w, map[string]any{"generation": d.current.Load().Generation})
		}
		c.done(err)
	})
	mux.HandleFunc("POST /teardown", d.serveTeardown)
	return mux
}

// sessions drains or kills the sessions of ?scope=tenant:ID[/ENV]. The
// principal is authorised for the scope it named before the daemon says
// whether that tenant exists, so that a refusal tells a tenant principal
// nothing of other tenants.
func (d *Daemon) sessions(w http.ResponseWriter, r *http.Request, action admin.Action) {
	q := r.URL.Query()
	scope, err := policy.ParseScope(q.Get("scope"))
	if err == nil && scope.IsGlobal() {
		err = errors.New("sessions are drained or killed per tenant or environment: scope tenant:ID or tenant:ID/ENVIRONMENT")
	}
	grace := defaultDrainGrace
	if s := q.Get("grace"); err == nil && s != "" && action == admin.ActDrain {
		grace, err = time.ParseDuration(s)
		if err == nil && (grace < 0 || grace > maxDrainGrace) {
			err = fmt.Errorf("grace %s: want 0..%s", s, maxDrainGrace)
		}
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	args := map[string]any{}
	if action == admin.ActDrain {
		args["grace"] = grace.String()
	}
	c, ok := d.begin(w, r, action, scope, args)
	if !ok {
		return
	}
	if !d.scopeKnown(scope) {
		err := fmt.Errorf("no such tenant or environment: %s", scope)
		http.Error(w, err.Error(), http.StatusNotFound)
		c.done(err)
		return
	}
	res := SessionsResult{Scope: scope}
	for _, comp := range d.components {
		if h, ok := comp.(SessionHolder); ok && h.Sessions() != nil {
			if action == admin.ActKill {
				res.Sessions += h.Sessions().Kill(scope.Tenant, scope.Environment)
			} else {
				res.Sessions += h.Sessions().Drain(scope.Tenant, scope.Environment, grace)
				res.Grace = grace.String()
			}
		}
	}
	c.e.Args["sessions"] = res.Sessions
	writeJSON(w, res)
	c.done(nil)
}

// scopeKnown reports whether the tenant (and environment) of s is in the
// configuration in force.
func (d *Daemon) scopeKnown(s policy.Scope) bool {
	cfg := d.cfg.Load()
	for _, t := range cfg.Tenants {
		if t.ID == s.Tenant {
			return s.Environment == "" || cfg.EnvironmentKnown(s.Tenant, s.Environment)
		}
	}
	return false
}

func (d *Daemon) feedConfigured(name string) bool {
	for _, f := range d.cfg.Load().Feeds {
		if f.Name == name {
			return true
		}
	}
	return false
}

// call is one authorised admin request on its way to the audit log.
type call struct {
	d *Daemon
	p admin.Principal
	e admin.Entry
}

// begin authorises action at target for the request's principal. On
// refusal it answers 403 with the reason, audits it and returns false.
func (d *Daemon) begin(w http.ResponseWriter, r *http.Request, action admin.Action, target policy.Scope, args map[string]any) (*call, bool) {
	p := d.principal(r)
	if args == nil {
		args = map[string]any{}
	}
	g, err := p.Authorize(action, target)
	if err != nil {
		d.refuse(w, p, action, target.String(), args, err)
		return nil, false
	}
	e := admin.NewEntry(p, action, target.String(), args)
	e.Role, e.Scope = g.Role.String(), g.Scope.String()
	if !action.Read() {
		// An action that cannot be audited is not taken: its intent line
		// is on disk before it runs, the result line follows.
		in := e
		in.Result = "intent"
		if err := d.commit(in); err != nil {
			d.m.adminRequests.WithLabelValues(string(action), "unaudited").Inc()
			d.m.auditErrors.Inc()
			d.log.Error("admin action refused: audit log not writable", "principal", p.Name(), "transport", p.Transport,
				"action", action, "target", target.String(), "err", err)
			http.Error(w, fmt.Sprintf("%s refused, nothing was done: audit log not writable: %v", action, err), http.StatusServiceUnavailable)
			return nil, false
		}
	}
	return &call{d: d, p: p, e: e}, true
}

// commit writes the intent line of an action and syncs it.
func (d *Daemon) commit(e admin.Entry) error {
	a := d.audit.Load()
	if a == nil {
		return errors.New("no audit log open")
	}
	return a.Commit(e)
}

func (d *Daemon) refuse(w http.ResponseWriter, p admin.Principal, action admin.Action, target string, args map[string]any, err error) {
	e := admin.NewEntry(p, action, target, args)
	if g, ok := p.Strongest(); ok {
		e.Role, e.Scope = g.Role.String(), g.Scope.String()
	}
	e.Result, e.Reason = "refused", err.Error()
	d.record(e)
	d.log.Warn("admin request refused", "principal", p.Name(), "transport", p.Transport, "action", action, "target", target, "reason", err)
	http.Error(w, err.Error(), http.StatusForbidden)
}

// done audits the outcome of the call.
func (c *call) done(err error) {
	c.e.Result = "ok"
	if err != nil {
		c.e.Result, c.e.Reason = "error", err.Error()
	}
	if !c.e.Action.Read() {
		c.d.log.Info("admin request", "principal", c.p.Name(), "transport", c.p.Transport, "action", c.e.Action,
			"target", c.e.Target, "result", c.e.Result, "reason", c.e.Reason)
	}
	c.d.record(c.e)
}

func (d *Daemon) record(e admin.Entry) {
	d.m.adminRequests.WithLabelValues(string(e.Action), e.Result).Inc()
	a := d.audit.Load()
	if a == nil {
		d.log.Error("admin request not audited: no audit log open", "action", e.Action, "principal", e.Principal)
		return
	}
	if err := a.Record(e); err != nil {
		d.m.auditErrors.Inc()
		d.log.Error("admin request not audited", "action", e.Action, "principal", e.Principal, "err", err)
	}
}

// principal is who sent r: the admin certificate of an HTTPS request, the
// peer credentials of a unix one. Neither: a principal with no grant.
func (d *Daemon) principal(r *http.Request) admin.Principal {
	rules := d.access.Load()
	if r.TLS != nil {
		return rules.Cert(r.TLS.PeerCertificates)
	}
	if cr, ok := r.Context().Value(credKey{}).(peerCred); ok {
		return rules.Unix(cr.uid, cr.gid)
	}
	return admin.Principal{Transport: "unknown", Subject: "(unidentified)"}
}

type credKey struct{}

type peerCred struct {
	uid, gid uint32
	pid      int32
}

func withCred(ctx context.Context, c peerCred) context.Context {
	return context.WithValue(ctx, credKey{}, c)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// joinWhy says why the daemon is not ready; to a tenant principal only
// that it is not, the reasons may name other tenants.
func joinWhy(why []string, global bool) string {
	if !global {
		return "see the global status"
	}
	s := ""
	for i, w := range why {
		if i > 0 {
			s += "; "
		}
		s += w
	}
	return s
}
