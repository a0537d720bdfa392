package telnet

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// ErrConfig marks a route or limit the handler cannot work with.
var ErrConfig = errors.New("invalid telnet configuration")

// route is one tenant's compiled policy on a listener.
type route struct {
	backend string
	tls     *tls.Config // nil: plain Telnet to the host

	luNames         []string
	termTypes       []string
	termDefault     func(string) bool // allows a type when termTypes is empty; nil allows any
	forceLU         string
	devNames        []string
	allowAutoSignOn bool
}

// buildRoutes compiles the routes of a listener of proto that
// policy.CheckListeners passed: one per (tenant, environment), with the settings of the
// listener's protocol only.
func buildRoutes(listener string, proto policy.Protocol, rs []policy.Route) (map[policy.TenantEnv]*route, error) {
	routes := map[policy.TenantEnv]*route{}
	for i, r := range rs {
		tc, err := certs.StreamBackendTLS(r)
		if err != nil {
			return nil, fmt.Errorf("%w: listener %q route %d: %w", ErrConfig, listener, i, err)
		}
		rt := &route{
			backend:         r.Backend,
			tls:             tc,
			luNames:         r.LUNames,
			termTypes:       r.TerminalTypes,
			forceLU:         r.ForceLU,
			devNames:        r.DevNames,
			allowAutoSignOn: r.AllowsAutoSignOn,
		}
		if proto == policy.ProtoTNVIP {
			rt.termDefault = vipDefault
		}
		routes[r.Env()] = rt
	}
	return routes, nil
}

// match reports whether s matches pattern, where '*' stands for any run of
// characters; letters compare without case, as hosts treat LU and device
// names.
func match(pattern, s string) bool {
	// Glob: linear, where a recursive matcher is exponential in the stars
	// and s comes from the client.
	return policy.Glob(strings.ToUpper(pattern), strings.ToUpper(s), 0)
}

func matchAny(patterns []string, s string) bool {
	for _, p := range patterns {
		if match(p, s) {
			return true
		}
	}
	return false
}

// luRestricted reports whether the route limits which LU a session gets.
func (r *route) luRestricted() bool { return r.forceLU != "" || len(r.luNames) > 0 }

func (r *route) luAllowed(lu string) bool {
	if r.forceLU != "" {
		return strings.EqualFold(lu, r.forceLU)
	}
	return len(r.luNames) == 0 || matchAny(r.luNames, lu)
}

func (r *route) termAllowed(t string) bool {
	if len(r.termTypes) == 0 {
		return r.termDefault == nil || r.termDefault(t)
	}
	return matchAny(r.termTypes, t)
}

func (r *route) devAllowed(d string) bool {
	return len(r.devNames) == 0 || matchAny(r.devNames, d)
}

// validLU accepts SNA names (policy.IsLUName), as a route's force_lu.
func validLU(s string) bool { return policy.IsLUName(s) }

// validDevName accepts IBM i device names (policy.IsDevName).
func validDevName(s string) bool { return policy.IsDevName(s) }

// validTermType accepts printable ASCII without spaces and without '@'.
func validTermType(b []byte) bool {
	if len(b) == 0 || len(b) > maxTermType {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c > '~' || c == '@' {
			return false
		}
	}
	return true
}

// splitTTYPE splits the value of TERMINAL-TYPE IS into type and LU, the
// RFC 1646 "type@LU" form.
func splitTTYPE(v []byte) (typ []byte, lu string, hasLU bool) {
	i := bytes.IndexByte(v, '@')
	if i < 0 {
		return v, "", false
	}
	return v[:i], string(v[i+1:]), true
}
