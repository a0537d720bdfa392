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
	forceLU         string
	devNames        []string
	allowAutoSignOn bool
}

func buildRoutes(listener string, proto policy.Protocol, rs []policy.Route) (map[string]*route, error) {
	routes := map[string]*route{}
	for i, r := range rs {
		where := fmt.Sprintf("listener %q route %d", listener, i)
		if r.Tenant == "" {
			return nil, fmt.Errorf("%w: %s: no tenant", ErrConfig, where)
		}
		if _, dup := routes[r.Tenant]; dup {
			return nil, fmt.Errorf("%w: %s: tenant %q has two routes", ErrConfig, where, r.Tenant)
		}
		rt := &route{
			backend:         r.Backend,
			luNames:         r.LUNames,
			termTypes:       r.TerminalTypes,
			forceLU:         r.ForceLU,
			devNames:        r.DevNames,
			allowAutoSignOn: r.AllowsAutoSignOn,
		}
		switch proto {
		case policy.ProtoTN3270:
			if len(r.DevNames) > 0 || r.AllowsAutoSignOn {
				return nil, fmt.Errorf("%w: %s: devnames and refuse_auto_sign_on are tn5250 settings", ErrConfig, where)
			}
			if r.ForceLU != "" && !validLU(r.ForceLU) {
				return nil, fmt.Errorf("%w: %s: force_lu %q is not an LU name", ErrConfig, where, r.ForceLU)
			}
		case policy.ProtoTN5250:
			if len(r.LUNames) > 0 || r.ForceLU != "" {
				return nil, fmt.Errorf("%w: %s: lu_names and force_lu are tn3270 settings", ErrConfig, where)
			}
		default:
			return nil, fmt.Errorf("%w: %s: protocol %q is not telnet", ErrConfig, where, proto)
		}
		tc, err := certs.StreamBackendTLS(r)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrConfig, where, err)
		}
		rt.tls = tc
		routes[r.Tenant] = rt
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
	return len(r.termTypes) == 0 || matchAny(r.termTypes, t)
}

func (r *route) devAllowed(d string) bool {
	return len(r.devNames) == 0 || matchAny(r.devNames, d)
}

// validLU accepts SNA names: letters, digits and the national characters
// # and $, one to eight of them. '@' is refused because it separates the
// LU in "type@LU" and a host could split such a name elsewhere.
func validLU(s string) bool {
	return validName(s, maxLUName, "#$")
}

// validDevName accepts IBM i device names.
func validDevName(s string) bool {
	return validName(s, maxDevName, "#$@_")
}

func validName(s string, max int, extra string) bool {
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
