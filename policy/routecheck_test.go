package policy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestCheckListeners: every route and listener the proxies would refuse,
// or serve otherwise than written, is reported with its place; a good
// policy passes.
func TestCheckListeners(t *testing.T) {
	web := func(rs ...Route) Listener {
		return Listener{Name: "web", Port: 443, Protocol: ProtoHTTPS, Routes: rs}
	}
	mf := func(proto Protocol, rs ...Route) Listener {
		return Listener{Name: "mf", Port: 992, Protocol: proto, Routes: rs}
	}
	http := Route{Tenant: "acme", Backend: "http://192.0.2.6"}
	tn := Route{Tenant: "acme", Backend: "192.0.2.7:23"}
	with := func(r Route, f func(*Route)) Route { f(&r); return r }
	good := &Policy{
		Tenants: []Tenant{{ID: "acme"}, {ID: "globex"}},
		Listeners: []Listener{
			web(http, with(http, func(r *Route) { r.Tenant = "globex"; r.Host = "g.example" }),
				with(http, func(r *Route) {
					r.Path = "/api"
					r.Backend = "https://192.0.2.8"
					r.Backends = []string{"https://192.0.2.8", "https://192.0.2.9:8443/base"}
					r.HealthPath, r.HealthInterval = "/ping", 10*time.Second
					r.BackendCA = "ca.pem"
				})),
			mf(ProtoTN3270, with(tn, func(r *Route) { r.ForceLU = "ACMELU01"; r.TerminalTypes = []string{"IBM-3278-2-E"} })),
			{Name: "ibmi", Port: 9920, Protocol: ProtoTN5250, StartTLS: true, Routes: []Route{with(tn, func(r *Route) { r.DevNames = []string{"ACME*"}; r.AllowsAutoSignOn = true })}},
			{Name: "raw", Port: 7000, Protocol: ProtoTCP, Routes: []Route{with(tn, func(r *Route) { r.BackendTLS = true; r.BackendCA = "ca.pem" })}},
			// URL schemes compare without case: this backend is https.
			{Name: "caps", Port: 8443, Protocol: ProtoHTTPS, Routes: []Route{with(http, func(r *Route) { r.Backend = "HTTPS://192.0.2.8"; r.BackendCA = "ca.pem" })}},
		},
	}
	if errs := good.CheckListeners(); len(errs) != 0 {
		t.Fatalf("good policy refused: %v", errs)
	}
	for _, tc := range []struct {
		name string
		l    Listener
		want string // the error's text: where and what
	}{
		{"no tenant", web(with(http, func(r *Route) { r.Tenant = "" })), `route 0 tenant: required`},
		{"unknown tenant", web(with(http, func(r *Route) { r.Tenant = "initech" })), `route 0 tenant: unknown tenant "initech"`},
		{"no backend", web(with(http, func(r *Route) { r.Backend = "" })), `route 0 backend: required (or backends)`},
		{"backend not first", web(with(http, func(r *Route) { r.Backends = []string{"http://192.0.2.9", "http://192.0.2.6"} })), `route 0 backend: "http://192.0.2.6" is not the first of backends`},
		{"backend twice", web(with(http, func(r *Route) { r.Backends = []string{"http://192.0.2.6", "http://192.0.2.6"} })), `route 0 backends[1]: "http://192.0.2.6" is listed twice`},
		{"backend scheme", web(with(http, func(r *Route) { r.Backend = "ftp://192.0.2.6" })), `must be an http:// or https:// URL`},
		{"backend user", web(with(http, func(r *Route) { r.Backend = "http://u:p@192.0.2.6" })), `without user, query or fragment`},
		{"backend fragment", web(with(http, func(r *Route) { r.Backend = "http://192.0.2.6/#x" })), `without user, query or fragment`},
		{"backend port", web(with(http, func(r *Route) { r.Backend = "http://192.0.2.6:0" })), `port must be 1..65535`},
		{"stream backend", mf(ProtoTN3270, with(tn, func(r *Route) { r.Backend = "192.0.2.7" })), `route 0 backend: "192.0.2.7" is not host:port`},
		{"health interval alone", web(with(http, func(r *Route) { r.HealthInterval = 5 * time.Second })), `route 0 health_interval: without health_path`},
		{"health path without interval", web(with(http, func(r *Route) { r.HealthPath = "/ping" })), `route 0 health_interval: health_path "/ping" needs a positive interval`},
		{"health path on telnet", mf(ProtoTN3270, with(tn, func(r *Route) { r.HealthPath = "/ping" })), `route 0 health_path`},
		{"dirty path", web(with(http, func(r *Route) { r.Path = "/a/../b" })), `route 0 path: must be a clean absolute path`},
		{"path on telnet", mf(ProtoTN3270, with(tn, func(r *Route) { r.Path = "/" })), `route 0 path: only https and soap routes match a path`},
		{"backend_tls on https", web(with(http, func(r *Route) { r.BackendTLS = true })), `route 0 backend_tls`},
		{"bad host", web(with(http, func(r *Route) { r.Host = "a.example/x" })), `route 0 host: "a.example/x" is not a host name`},
		{"key without cert", web(with(http, func(r *Route) { r.Backend = "https://192.0.2.6"; r.BackendKey = "k.pem" })), `route 0 backend_cert: required with backend_key`},
		{"ca on a plain backend", web(with(http, func(r *Route) { r.BackendCA = "ca.pem" })), `route 0 backend_ca: backend_ca/backend_cert/backend_key need an https:// backend`},
		{"ca on a plain host", mf(ProtoTN3270, with(tn, func(r *Route) { r.BackendCA = "ca.pem" })), `need backend_tls: true`},
		{"devnames on tn3270", mf(ProtoTN3270, with(tn, func(r *Route) { r.DevNames = []string{"X"} })), `route 0 devnames: does not apply to a tn3270 listener`},
		{"auto sign-on on tn3270", mf(ProtoTN3270, with(tn, func(r *Route) { r.AllowsAutoSignOn = true })), `route 0 refuse_auto_sign_on: does not apply to a tn3270 listener`},
		{"lu on tn5250", mf(ProtoTN5250, with(tn, func(r *Route) { r.LUNames = []string{"X"} })), `route 0 lu_names: does not apply to a tn5250 listener`},
		{"force lu on tn5250", mf(ProtoTN5250, with(tn, func(r *Route) { r.ForceLU = "X" })), `route 0 force_lu: does not apply`},
		{"bad force lu", mf(ProtoTN3270, with(tn, func(r *Route) { r.ForceLU = "LU@1" })), `route 0 force_lu: "LU@1" is not an LU name`},
		{"websocket on soap", Listener{Name: "s", Protocol: ProtoSOAP, Routes: []Route{with(http, func(r *Route) { r.SOAPActions = []string{"urn:a:Get"}; r.WebSocket = true })}}, `route 0 websocket: does not apply to a soap listener`},
		{"soap without actions", Listener{Name: "s", Protocol: ProtoSOAP, Routes: []Route{http}}, `route 0 soap_actions: a soap route needs at least one allowed operation`},
		{"bad soap action", Listener{Name: "s", Protocol: ProtoSOAP, Routes: []Route{with(http, func(r *Route) { r.SOAPActions = []string{"urn:a:"} })}}, `route 0 soap_actions[0]: bad soap action`},
		{"two routes of a tenant", mf(ProtoTN3270, tn, tn), `route 1: overlaps route 0: same tenant, host and path`},
		{"hosts equal", web(with(http, func(r *Route) { r.Host = "A.example" }), with(http, func(r *Route) { r.Host = "a.example." })), `route 1: overlaps route 0`},
		{"paths equal", web(http, with(http, func(r *Route) { r.Path = "/" })), `route 1: overlaps route 0`},
		{"starttls on https", Listener{Name: "web", Protocol: ProtoHTTPS, StartTLS: true, Routes: []Route{http}}, `listener "web" starttls: only tn3270, tn5250 and tnvip`},
		{"no routes", web(), `listener "web" routes: a listener needs at least one route`},
		{"routes on a gateway's listener", Listener{Name: "web", Protocol: ProtoHTTPS, Tunnel: true, Routes: []Route{http}}, `listener "web" routes: a gateway routes nothing itself`},
		{"starttls on a gateway's listener", Listener{Name: "mf", Protocol: ProtoTN3270, Tunnel: true, StartTLS: true}, `listener "mf" starttls: a gateway takes implicit TLS only`},
		{"bad protocol", Listener{Name: "x", Protocol: "ftp", Routes: []Route{tn}}, `listener "x" protocol: "ftp" is not one of https, soap, tn3270, tn5250, tnvip, tcp`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Policy{Tenants: good.Tenants, Listeners: []Listener{tc.l}}
			errs := p.CheckListeners()
			var all []string
			for _, e := range errs {
				all = append(all, e.Error())
				if !errors.Is(e, ErrListener) || e.Listener != 0 {
					t.Errorf("%v: not ErrListener of listener 0", e)
				}
			}
			if !strings.Contains(strings.Join(all, "\n"), tc.want) {
				t.Errorf("errors %q lack %q", all, tc.want)
			}
		})
	}
	// Two listeners of one name, or on one address.
	two := &Policy{Listeners: []Listener{web(http), web(http)}}
	var all []string
	for _, e := range two.CheckListeners() {
		all = append(all, e.Error())
	}
	for _, want := range []string{`listener "web" name: duplicate listener "web"`, `listener "web" listen: address :443 used twice`} {
		if !strings.Contains(strings.Join(all, "\n"), want) {
			t.Errorf("errors %q lack %q", all, want)
		}
	}
	bad := &Policy{Listeners: []Listener{{Name: "x", Protocol: "ftp", Routes: []Route{tn}}}}
	if errs := bad.CheckListeners(); len(errs) != 1 || !errors.Is(errs[0], ErrProtocol) {
		t.Errorf("unknown protocol: %v, want one ErrProtocol", errs)
	}
}

// TestTunnelListenerWithoutRoutes: a gateway's listener needs no route.
func TestTunnelListenerWithoutRoutes(t *testing.T) {
	p := &Policy{Listeners: []Listener{{Name: "web", Protocol: ProtoHTTPS, Tunnel: true}}}
	if errs := p.CheckListeners(); len(errs) != 0 {
		t.Fatalf("a tunnel listener without routes: %v", errs)
	}
}
