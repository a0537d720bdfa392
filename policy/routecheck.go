package policy

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Errors of CheckListeners: ErrListener marks every problem it reports,
// ErrProtocol also a listener of a protocol no proxy speaks.
var (
	ErrListener = errors.New("invalid listener or route")
	ErrProtocol = errors.New("protocol not supported")
)

// ListenerError is one problem of a listener or of one of its routes. It
// names where as the configuration does, relative to the listener: Route
// is the index of the route (-1: the listener itself) and Field the key
// ("backend", "backends[1]", "soap_actions[0]"; "" for the whole).
type ListenerError struct {
	Listener int // index in Policy.Listeners
	Name     string
	Route    int
	Field    string
	Msg      string
	Err      error // a more specific error it also is (ErrProtocol), or nil
}

func (e *ListenerError) Error() string {
	where := fmt.Sprintf("listener %q", e.Name)
	if e.Route >= 0 {
		where += fmt.Sprintf(" route %d", e.Route)
	}
	if e.Field != "" {
		where += " " + e.Field
	}
	return where + ": " + e.Msg
}

func (e *ListenerError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrListener, e.Err}
	}
	return []error{ErrListener}
}

// CheckListeners reports every problem of p's listeners and routes that
// the proxies would refuse, or serve otherwise than written: the one
// place routes are validated. The configuration adds key paths to these;
// the proxy refuses a policy with any (Apply) and trusts the rest. It
// checks what the policy says, not the files it names. A route must name
// one of p.Tenants, unless p has none at all (a proxy's tests build such
// policies; the configuration refuses to have none).
func (p *Policy) CheckListeners() []*ListenerError {
	var errs []*ListenerError
	tenants := map[string]bool{}
	for _, t := range p.Tenants {
		tenants[t.ID] = true
	}
	names := map[string]bool{}
	addrs := map[string]bool{}
	for i, l := range p.Listeners {
		add := func(route int, field, format string, args ...any) {
			errs = append(errs, &ListenerError{Listener: i, Name: l.Name, Route: route, Field: field, Msg: fmt.Sprintf(format, args...)})
		}
		if names[l.Name] {
			add(-1, "name", "duplicate listener %q", l.Name)
		}
		names[l.Name] = true
		if a := l.ListenAddress(); addrs[a] {
			add(-1, "listen", "address %s used twice", a)
		} else {
			addrs[a] = true
		}
		switch {
		case l.Tunnel && len(l.Routes) > 0:
			add(-1, "routes", "a gateway routes nothing itself: the tenant's connector holds the routes")
		case l.Tunnel && l.StartTLS:
			add(-1, "starttls", "a gateway takes implicit TLS only: START_TLS would leave the client's handshake inside Telnet, out of the tunnel's reach")
		case !l.Tunnel && len(l.Routes) == 0:
			add(-1, "routes", "a listener needs at least one route: without one every tenant is refused")
		}
		if !slices.Contains(Protocols, l.Protocol) {
			var all []string
			for _, p := range Protocols {
				all = append(all, string(p))
			}
			add(-1, "protocol", "%q is not one of %s", l.Protocol, strings.Join(all, ", "))
			errs[len(errs)-1].Err = ErrProtocol
			continue // its routes mean nothing without one
		}
		if l.StartTLS && !l.Protocol.Telnet() {
			add(-1, "starttls", "only tn3270, tn5250 and tnvip listeners negotiate START_TLS")
		}
		seen := map[string]int{}
		for j, r := range l.Routes {
			for _, e := range checkRoute(l.Protocol, r) {
				add(j, e[0], "%s", e[1])
			}
			switch {
			case r.Tenant == "":
				add(j, "tenant", "required")
			case len(p.Tenants) > 0 && !tenants[r.Tenant]:
				add(j, "tenant", "unknown tenant %q", r.Tenant)
			case len(p.Tenants) > 0:
				if msg := checkRouteEnvironment(p.Tenants, r); msg != "" {
					add(j, "environment", "%s", msg)
				}
			}
			// What the proxies route on: the (tenant, environment) alone
			// for tcp and terminal listeners, with the host (as Host and
			// SNI compare) and path prefix for https and soap.
			key := r.Env().String() + "|" + NormHost(r.Host) + "|" + r.Path
			if l.Protocol.HTTP() && r.Path == "" {
				key += "/"
			}
			if prev, ok := seen[key]; ok {
				add(j, "", "overlaps route %d: same tenant, host and path", prev)
			} else {
				seen[key] = j
			}
		}
	}
	return errs
}

// HTTP reports whether listeners of proto speak HTTP (https and soap).
func (proto Protocol) HTTP() bool { return proto == ProtoHTTPS || proto == ProtoSOAP }

// NormHost is a host as routes compare it: lower case, without a port or
// a trailing dot.
func NormHost(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// checkRoute returns the problems of one route of a proto listener as
// (field, message) pairs.
func checkRoute(proto Protocol, r Route) [][2]string {
	var out [][2]string
	add := func(field, format string, args ...any) {
		out = append(out, [2]string{field, fmt.Sprintf(format, args...)})
	}
	httpish := proto.HTTP()
	switch {
	case r.Backend == "" && len(r.Backends) == 0:
		add("backend", "required (or backends)")
	case len(r.Backends) == 0:
		if err := checkBackend(httpish, r.Backend); err != nil {
			add("backend", "%v", err)
		}
	default:
		if r.Backend != "" && r.Backend != r.Backends[0] {
			add("backend", "%q is not the first of backends", r.Backend)
		}
		for i, b := range r.Backends {
			field := fmt.Sprintf("backends[%d]", i)
			if err := checkBackend(httpish, b); err != nil {
				add(field, "%v", err)
			} else if slices.Contains(r.Backends[:i], b) {
				add(field, "%q is listed twice", b)
			}
		}
	}
	switch {
	case r.HealthPath != "" && (!httpish || !strings.HasPrefix(r.HealthPath, "/")):
		add("health_path", "an https or soap route's URL path beginning with '/', got %q", r.HealthPath)
	case r.HealthPath == "" && r.HealthInterval != 0:
		add("health_interval", "without health_path nothing is checked")
	case r.HealthPath != "" && r.HealthInterval <= 0:
		add("health_interval", "health_path %q needs a positive interval", r.HealthPath)
	}
	if httpish {
		if r.Path != "" && CheckRoutePath(r.Path) != nil {
			add("path", "must be a clean absolute path, written decoded: a leading '/', no empty, '.' or '..' segment, no backslash, ';', '%%' or control character; got %q", r.Path)
		}
		if r.BackendTLS {
			add("backend_tls", "https and soap routes choose TLS by the backend URL scheme")
		}
	} else if r.Path != "" {
		add("path", "only https and soap routes match a path")
	}
	if r.Host != "" && (strings.ContainsAny(r.Host, "/: ") || len(r.Host) > 253) {
		add("host", "%q is not a host name", r.Host)
	}
	if r.BackendKey != "" && r.BackendCert == "" {
		add("backend_cert", "required with backend_key")
	}
	tlsBackend := r.BackendTLS
	if httpish {
		tlsBackend = r.HTTPSBackend()
	}
	if !tlsBackend && r.CheckPlainBackend() != nil {
		need := "backend_tls: true"
		if httpish {
			need = "an https:// backend"
		}
		add("backend_ca", "backend_ca/backend_cert/backend_key need %s", need)
	}
	only := func(key string, set bool, allowed ...Protocol) {
		if set && !slices.Contains(allowed, proto) {
			add(key, "does not apply to a %s listener", proto)
		}
	}
	only("backends", len(r.Backends) > 0, ProtoHTTPS, ProtoSOAP)
	only("host", r.Host != "", ProtoHTTPS, ProtoSOAP) // tcp and telnet route by tenant alone
	only("soap_actions", len(r.SOAPActions) > 0, ProtoSOAP)
	only("allow_wsdl", r.AllowWSDL, ProtoSOAP)
	only("path_params", r.PathParams, ProtoHTTPS, ProtoSOAP)
	only("websocket", r.WebSocket, ProtoHTTPS) // a tunnel would carry SOAP past its inspection
	only("lu_names", len(r.LUNames) > 0, ProtoTN3270)
	only("force_lu", r.ForceLU != "", ProtoTN3270)
	only("terminal_types", len(r.TerminalTypes) > 0, ProtoTN3270, ProtoTN5250, ProtoTNVIP)
	only("devnames", len(r.DevNames) > 0, ProtoTN5250)
	only("refuse_auto_sign_on", r.AllowsAutoSignOn, ProtoTN5250)
	if proto.Telnet() {
		for i, tt := range r.TerminalTypes {
			if err := CheckTerminalType(tt); err != nil {
				add(fmt.Sprintf("terminal_types[%d]", i), "%v", err)
			}
		}
	}
	if proto == ProtoTN3270 && r.ForceLU != "" && !IsLUName(r.ForceLU) {
		add("force_lu", "%q is not an LU name (1 to 8 letters, digits, '#' or '$')", r.ForceLU)
	}
	if proto == ProtoSOAP {
		if len(r.SOAPActions) == 0 {
			add("soap_actions", "a soap route needs at least one allowed operation")
		}
		for i, a := range r.SOAPActions {
			if _, err := ParseSOAPAction(a); err != nil {
				add(fmt.Sprintf("soap_actions[%d]", i), "%v", err)
			}
		}
	}
	return out
}

// HTTPSBackend reports whether an https or soap route speaks TLS to any
// of its backends: a URL whose scheme is https, in any case, as the HTTP
// proxy parses it.
func (r Route) HTTPSBackend() bool {
	return slices.ContainsFunc(append([]string{r.Backend}, r.Backends...), func(b string) bool {
		u, err := url.Parse(b)
		return err == nil && u.Scheme == "https"
	})
}

// checkBackend checks one backend address: an http:// or https:// URL of
// a host (no user, query or fragment) for https and soap, else host:port.
func checkBackend(httpish bool, b string) error {
	if !httpish {
		_, err := HostPort(b, "")
		return err
	}
	u, err := url.Parse(b)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("must be an http:// or https:// URL, got %q", b)
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return fmt.Errorf("must be http(s)://host[:port][/path], without user, query or fragment, got %q", b)
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	_, err = HostPort(u.Host, port)
	return err
}

// HostPort checks host:port and returns it joined; the port may default
// to defPort when that is not "".
func HostPort(s, defPort string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if defPort == "" || strings.Count(s, ":") > 1 && !strings.HasPrefix(s, "[") {
			return "", fmt.Errorf("%q is not host:port", s)
		}
		host, port = s, defPort
	}
	if host == "" {
		return "", fmt.Errorf("%q has no host", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%q: port must be 1..65535", s)
	}
	return net.JoinHostPort(host, port), nil
}

// IsLUName accepts SNA names: letters, digits and the national characters
// # and $, one to eight of them. '@' is refused because it separates the
// LU in "type@LU" and a host could split such a name elsewhere.
func IsLUName(s string) bool { return isName(s, 8, "#$") }

// IsDevName accepts IBM i device names: one to ten letters, digits, '#',
// '$', '@' or '_'.
func IsDevName(s string) bool { return isName(s, 10, "#$@_") }

func isName(s string, max int, extra string) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte(extra, c) >= 0) {
			return false
		}
	}
	return true
}

// checkRouteEnvironment says what is wrong with the environment r names
// for its tenant (one of tenants), or "".
func checkRouteEnvironment(tenants []Tenant, r Route) string {
	i := slices.IndexFunc(tenants, func(t Tenant) bool { return t.ID == r.Tenant })
	if i < 0 {
		return ""
	}
	t := tenants[i]
	switch {
	case len(t.Environments) == 0 && r.Environment != "" && r.Environment != DefaultEnvironment:
		return fmt.Sprintf("tenant %q declares no environments: leave environment out (or %q)", t.ID, DefaultEnvironment)
	case len(t.Environments) == 0:
		return ""
	case r.Environment == "":
		return fmt.Sprintf("required: tenant %q declares environments (%s); a route serves exactly one", t.ID, strings.Join(t.EnvironmentNames(), ", "))
	case !slices.Contains(t.EnvironmentNames(), r.Environment):
		return fmt.Sprintf("unknown environment %q of tenant %q (it has %s)", r.Environment, t.ID, strings.Join(t.EnvironmentNames(), ", "))
	}
	return ""
}
